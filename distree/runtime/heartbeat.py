"""Liveness beside the data path: each rank bumps a counter in the rendezvous store.

A peer that stops sending may be slow, stalled or gone. A dead process closes its sockets and
its links fail at once, but a frozen one (SIGSTOP, a hung driver, a cut cable) keeps them open.
The store is a separate TCP service (the aggregator hosts it under `distree deploy`, torchrun's
agent under torchrun), so a watcher that sees a peer's counter stand still for `dead_after`
seconds declares the peer dead and stops waiting for it, whatever its links say. A watcher
that blocks in a receive (a device) cannot check: its heartbeat thread calls `on_silence` instead.
"""
import threading
import time

import torch.distributed as dist


class Heartbeat:
    """A daemon thread that beats for this rank and watches the counters of some peers."""

    def __init__(self, store: dist.Store, rank: int, watch: list[int], interval: float = 0.1,
                 dead_after: float = None, on_silence=None):
        self.store, self.rank, self.interval = dist.PrefixStore("distree/heartbeat", store), rank, interval
        self.dead_after, self.on_silence = dead_after, on_silence  # on_silence(peer, seconds), from this thread
        now = time.monotonic()
        self._last_change = {peer: now for peer in watch}  # silence counts from the start
        self._last_value = {peer: None for peer in watch}
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()
        if on_silence is not None:  # its own thread: a store call can block for the store's whole timeout
            threading.Thread(target=self._watch, daemon=True, name="watchdog").start()

    def silent_for(self, peer: int) -> float:
        """Seconds since peer's counter last moved (or since watching began)."""
        return time.monotonic() - self._last_change[peer]

    def _beat(self) -> None:
        while True:
            try:
                self.store.add(str(self.rank), 1)
                for peer in self._last_value:
                    value = self.store.add(str(peer), 0)  # a read that never blocks on a missing key
                    if value != self._last_value[peer]:
                        self._last_value[peer], self._last_change[peer] = value, time.monotonic()
            except RuntimeError:  # DistStoreError and connection errors
                pass  # the store is unreachable: nothing moves, so every watched peer falls silent
            time.sleep(self.interval)

    def _watch(self) -> None:
        while True:
            for peer in self._last_change:
                if self.silent_for(peer) > self.dead_after:
                    self.on_silence(peer, self.silent_for(peer))
            time.sleep(self.interval)
