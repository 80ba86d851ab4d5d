"""`distree deploy`: the aggregator and N student devices as local processes on loopback.

Why not torchrun or torch.multiprocessing.spawn here: both treat one failed worker as a failed
job and stop the others, which is exactly what the fault handling must survive. deploy starts
independent processes (spawned, so each is a fresh interpreter as under torchrun), gives them
the environment torchrun would, waits for the aggregator, then gives the devices a grace period
to finish before it kills any that are left (a frozen device never finishes by itself).
"""
import multiprocessing
import os
import socket
import sys
import time
from dataclasses import dataclass

from distree.runtime.config import ServeConfig


@dataclass
class DeployResult:
    codes: list  # exit code per rank (negative: killed by that signal); rank 0 is the aggregator
    killed: list  # ranks deploy had to kill: still running after the grace period or the timeout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(config: ServeConfig, env: dict) -> None:
    os.environ.update(env)
    from distree.runtime.rank import run_rank  # imported once the environment is set

    code = run_rank(config)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start(config: ServeConfig, devices: int) -> list:
    """Start the 1 + devices processes of a session (spawned, on loopback); rank 0 first."""
    port, ctx = free_port(), multiprocessing.get_context("spawn")
    procs = []
    for rank in range(devices + 1):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(devices + 1), "LOCAL_WORLD_SIZE": str(devices + 1)}
        proc = ctx.Process(target=_rank_main, args=(config, env), name=f"distree-rank{rank}")
        proc.start()
        procs.append(proc)
    return procs


def finish(procs: list, timeout_s: float, grace_s: float) -> DeployResult:
    """Wait for the aggregator (procs[0]; up to timeout_s if > 0), then up to grace_s for the devices; kill
    whatever is still running."""
    procs[0].join(timeout_s if timeout_s > 0 else None)
    end = time.monotonic() + grace_s
    killed = []
    for rank, proc in enumerate(procs):
        proc.join(max(0.0, end - time.monotonic()) if rank else 0)
        if proc.is_alive():
            proc.kill()
            proc.join()
            killed.append(rank)
    return DeployResult([p.exitcode for p in procs], killed)


def deploy(config: ServeConfig, devices: int, timeout_s: float = 0.0) -> DeployResult:
    """Run a session of 1 + devices local processes; timeout_s > 0 bounds the whole session."""
    grace_s = config.dead_after_s + 2.0  # a device stops by itself within dead_after_s of its aggregator
    return finish(start(config, devices), timeout_s, grace_s)
