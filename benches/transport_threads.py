"""What the runtime's threads cost the transport: the gloo round bare, and as the runtime's links move it.

    .venv/bin/python benches/transport_threads.py [--devices 2] [--repeats 2]

Rank 0 sends an INPUT-sized message to every device at once and takes a FEATURE-sized one back
from each, ROUNDS times, with each side in one of two ways:

* bare: blocking `dist.send` / `dist.recv` in the main thread (rank 0 sends with `isend` to
  every device, then waits for those sends), as `runtime_floor.py` times the floor;
* runtime: as a session does. Rank 0 sends and receives through `distree.runtime.links.Link`:
  `isend` from the caller and a thread that waits on each send; a receiving thread per device
  that puts every message in a queue, which the main thread reads with a timeout. A device posts
  the receive of its next input before it answers, and answers through a `Link`.

No model, no encoding, no Python beyond the messages' path: the difference between the four
combinations is what the runtime's threads and hand-offs cost beyond gloo. One torch thread per
rank. Prints the median and p95 of a round per combination, `repeats` times in turn.
"""
import argparse
import json
import os
import queue
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distree.runtime import messages as m
from distree.runtime.deploy import free_port
from distree.runtime.links import Link

ROUNDS, WARMUP = 2000, 200
INPUT = m.message_size(1 * 32 * 32)  # int32 elements of the demo's INPUT message (Fashion-MNIST, 1 x 32 x 32)
FEATURE = m.message_size(10)  # and of its FEATURE message (10 classes)
WAYS = ("bare", "runtime")


def exchange(sizes: tuple[int, int], devices: int, out: Path, ways: tuple = ("bare", "bare"),
             cpus: list | None = None) -> dict:
    """Median and p95 (ms) of ROUNDS rounds between rank 0 and `devices` peers: sizes (down, up) int32 elements
    to each and back from each; ways: (rank 0's, the devices'); cpus: each rank's CPUs, or None; out: a
    file for the times."""
    mp.start_processes(_rank, args=(free_port(), devices + 1, ways, sizes, cpus, str(out)), nprocs=devices + 1,
                       start_method="spawn")
    ms = np.asarray(json.loads(out.read_text())) * 1e3
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}


def _rank(rank: int, port: int, world: int, ways: tuple, sizes: tuple, cpus: list | None, out: str) -> None:
    """One rank of the exchange."""
    torch.set_num_threads(1)
    if cpus is not None:
        os.sched_setaffinity(0, cpus[rank])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    down, up = torch.zeros(sizes[0], dtype=torch.int32), torch.zeros(sizes[1], dtype=torch.int32)
    if rank == 0:
        times = (_aggregator_bare if ways[0] == "bare" else _aggregator_links)(world, down, up)
        Path(out).write_text(json.dumps(times[WARMUP:]))
    else:
        (_device_bare if ways[1] == "bare" else _device_posted)(down, up)
        time.sleep(0.5)  # let the last answer leave
    os._exit(0)  # a receiving thread stays blocked in gloo: leave without joining it, as the runtime's ranks do


def _aggregator_bare(world: int, down: torch.Tensor, up: torch.Tensor) -> list[float]:
    times = []
    for _ in range(WARMUP + ROUNDS):
        t = time.perf_counter()
        for work in [dist.isend(down, peer) for peer in range(1, world)]:  # to every device at once
            work.wait()
        for peer in range(1, world):
            dist.recv(up, peer)
        times.append(time.perf_counter() - t)
    return times


def _aggregator_links(world: int, down: torch.Tensor, up: torch.Tensor) -> list[float]:
    inbox = queue.SimpleQueue()
    links, times = [Link(peer, inbox, recv_numel=up.numel()) for peer in range(1, world)], []
    for _ in range(WARMUP + ROUNDS):
        t = time.perf_counter()
        for link in links:
            link.send(down)
        for _ in links:
            while True:  # as Aggregator._collect waits: with a timeout, so it could watch a deadline
                try:
                    inbox.get(timeout=0.1)
                    break
                except queue.Empty:
                    pass
        times.append(time.perf_counter() - t)
    return times


def _device_bare(down: torch.Tensor, up: torch.Tensor) -> None:
    for _ in range(WARMUP + ROUNDS):
        dist.recv(down, 0)
        dist.send(up, 0)


def _device_posted(down: torch.Tensor, up: torch.Tensor) -> None:
    link = Link(0)
    buf = torch.empty_like(down)
    work = dist.irecv(buf, 0)
    for _ in range(WARMUP + ROUNDS):
        work.wait()
        buf = torch.empty_like(down)
        work = dist.irecv(buf, 0)  # the next input's receive, posted before the answer leaves (Device.serve)
        link.send(up.clone())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.devices < 1 or args.repeats < 1:
        parser.error("--devices and --repeats must be at least 1")
    print(f"{args.devices + 1} processes, {INPUT * 4} B to each device and {FEATURE * 4} B back, "
          f"{ROUNDS} rounds; rank 0 / devices: median and p95 ms")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for ways in [(a, d) for a in WAYS for d in WAYS]:
                t = exchange((INPUT, FEATURE), args.devices, Path(tmp) / "times.json", ways)
                print(f"{ways[0]:>8} / {ways[1]:<8} {t['median_ms']:7.3f} {t['p95_ms']:7.3f}", flush=True)

if __name__ == "__main__":
    main()
