"""`--cpus`: which CPUs each rank of a session may run on.

`--cpus 0,1,1` pins the aggregator (rank 0) to CPU 0 and both devices to CPU 1; an entry may name
several CPUs joined by `+` (`0,1+2,3`). One entry per rank, each CPU one this machine lets the
process use (`os.sched_getaffinity`). Without `--cpus` the kernel places every thread.
"""
import os

from distree.errors import DistreeError


def parse_cpus(text: str, ranks: int) -> list[set[int]]:
    """The CPUs of each of `ranks` ranks, or a DistreeError naming what is wrong with text."""
    entries = text.split(",")
    if len(entries) != ranks:
        raise DistreeError(f"--cpus {text}: {len(entries)} entries for {ranks} ranks (the aggregator and "
                           f"{ranks - 1} devices); give one per rank, e.g. {','.join(['0'] * ranks)}")
    usable = os.sched_getaffinity(0)
    out = []
    for entry in entries:
        try:
            cpus = {int(c) for c in entry.split("+")}
        except ValueError:
            raise DistreeError(f"--cpus {text}: '{entry}' is not a CPU number or CPUs joined by '+'") from None
        if not cpus <= usable:
            raise DistreeError(f"--cpus {text}: CPU {min(cpus - usable)} is not one this process may use "
                               f"({','.join(map(str, sorted(usable)))})")
        out.append(cpus)
    return out


def pin(text: str | None, rank: int, ranks: int) -> None:
    """Pin every thread of this process (gloo's and the heartbeat's too) and those it starts later to its
    entry of text."""
    if text is None:
        return
    cpus = parse_cpus(text, ranks)[rank]
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
