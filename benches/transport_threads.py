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


def _rank(rank: int, port: int, world: int, ways: tuple, out: str) -> None:
    """One rank of the exchange; ways: (rank 0's, the devices')."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if rank == 0:
        times = (_aggregator_bare if ways[0] == "bare" else _aggregator_links)(world)
        Path(out).write_text(json.dumps(times[WARMUP:]))
    else:
        (_device_bare if ways[1] == "bare" else _device_posted)()
        time.sleep(0.5)  # let the last answer leave
    os._exit(0)  # a receiving thread stays blocked in gloo: leave without joining it, as the runtime's ranks do


def _aggregator_bare(world: int) -> list[float]:
    down, up, times = torch.zeros(INPUT, dtype=torch.int32), torch.zeros(FEATURE, dtype=torch.int32), []
    for _ in range(WARMUP + ROUNDS):
        t = time.perf_counter()
        for work in [dist.isend(down, peer) for peer in range(1, world)]:
            work.wait()
        for peer in range(1, world):
            dist.recv(up, peer)
        times.append(time.perf_counter() - t)
    return times


def _aggregator_links(world: int) -> list[float]:
    inbox = queue.SimpleQueue()
    links = [Link(peer, inbox, recv_numel=FEATURE) for peer in range(1, world)]
    down, times = torch.zeros(INPUT, dtype=torch.int32), []
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


def _device_bare() -> None:
    down, up = torch.zeros(INPUT, dtype=torch.int32), torch.zeros(FEATURE, dtype=torch.int32)
    for _ in range(WARMUP + ROUNDS):
        dist.recv(down, 0)
        dist.send(up, 0)


def _device_posted() -> None:
    link, up = Link(0), torch.zeros(FEATURE, dtype=torch.int32)
    buf = torch.empty(INPUT, dtype=torch.int32)
    work = dist.irecv(buf, 0)
    for _ in range(WARMUP + ROUNDS):
        work.wait()
        buf = torch.empty(INPUT, dtype=torch.int32)
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
        out = Path(tmp) / "times.json"
        for _ in range(args.repeats):
            for ways in [(a, d) for a in WAYS for d in WAYS]:
                mp.start_processes(_rank, args=(free_port(), args.devices + 1, ways, str(out)),
                                   nprocs=args.devices + 1, start_method="spawn")
                ms = np.asarray(json.loads(out.read_text())) * 1e3
                print(f"{ways[0]:>8} / {ways[1]:<8} {np.median(ms):7.3f} {np.percentile(ms, 95):7.3f}", flush=True)


if __name__ == "__main__":
    main()
