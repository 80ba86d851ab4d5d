"""Joining the process group: roles, backend choice, rendezvous and timeouts.

Roles: rank 0 is the aggregator, ranks 1..N are student devices 0..N-1. The aggregator is rank
0 because rank 0 hosts the rendezvous store when no torchrun agent does (`distree deploy`):
the store then lives exactly as long as the one process the run cannot do without, and no
student's death takes it down.
"""
import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distree.errors import DistreeError

AGGREGATOR_RANK = 0
# A blocking gloo receive that outlives this timeout closes its connection; liveness is the
# heartbeat's and the deadlines' job, so this is only a backstop for a device idle for a day.
OP_TIMEOUT = datetime.timedelta(days=1)
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Session:
    store: dist.Store
    rank: int
    world_size: int
    backend: str
    device: torch.device  # where message buffers live: cuda for NCCL, else the CPU

    @property
    def num_devices(self) -> int:
        return self.world_size - 1


def choose_backend(requested: str) -> str:
    """NCCL when every local rank can have a GPU of its own, else gloo (or what was asked)."""
    if requested != "auto":
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local else "gloo"


def init_group(backend: str = "auto", connect_timeout: float = 60.0) -> Session:
    """Join the group torchrun or `distree deploy` described in the environment."""
    missing = [k for k in LAUNCH_ENV if k not in os.environ]
    if missing:
        raise DistreeError(f"{', '.join(missing)} not set: start with `torchrun --nproc-per-node N+1 -m distree.serve` "
                           "or `distree deploy`")
    if int(os.environ["WORLD_SIZE"]) < 2:
        raise DistreeError("need at least 2 processes: the aggregator and one student device")
    backend = choose_backend(backend)
    if _is_loopback(os.environ["MASTER_ADDR"]):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback_interface())  # keep gloo off other interfaces
    timeout = datetime.timedelta(seconds=connect_timeout)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=OP_TIMEOUT)
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return Session(store, rank, world_size, backend, device)


def _is_loopback(host: str) -> bool:
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else "lo"
