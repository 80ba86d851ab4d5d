"""Liveness beside the data path: each rank bumps a counter in the rendezvous store.

A peer that stops sending may be slow, stalled or gone. A dead process closes its sockets and
its links fail at once, but a frozen one (SIGSTOP, a hung driver, a cut cable) keeps them open.
The store is a separate TCP service (the aggregator hosts it under `distree deploy`, torchrun's
agent under torchrun), so a watcher that sees a peer's counter stand still for `dead_after`
seconds declares the peer dead and stops waiting for it, whatever its links say. A watcher
that blocks in a receive (a device) cannot check: its heartbeat thread calls `on_silence` instead.

Silence counts from a peer's first beat: until then the peer is still starting (loading its
model on a loaded machine can take longer than `dead_after`), and it is given `startup_s`
(the session's connect timeout) for that first beat instead.
"""
import threading
import time

import torch.distributed as dist


class Watch:
    """What a rank knows of its peers' heartbeats: when each one's counter last moved."""

    def __init__(self, peers: list[int], dead_after: float, startup_s: float, now: float):
        self.dead_after, self.startup_s, self.began = dead_after, startup_s, now
        self.last_change = {peer: None for peer in peers}  # None: no beat seen yet
        self.last_value = {peer: 0 for peer in peers}  # a counter the peer never bumped reads 0

    def saw(self, peer: int, value: int, now: float) -> None:
        """Peer's counter read `value` at time now."""
        if value != self.last_value[peer]:
            self.last_value[peer], self.last_change[peer] = value, now

    def silence(self, peer: int, now: float) -> str | None:
        """Why peer counts as lost at time now (silent for `dead_after` seconds since its last beat, or
        no first beat within `startup_s` of watching); None while it does not."""
        last = self.last_change[peer]
        if last is None:
            waited = now - self.began
            return f"no first heartbeat within {waited:.1f} s" if waited > self.startup_s else None
        return f"no heartbeat for {now - last:.1f} s" if now - last > self.dead_after else None


class Heartbeat:
    """A daemon thread that beats for this rank and watches the counters of some peers."""

    def __init__(self, store: dist.Store, rank: int, watch: list[int], dead_after: float, startup_s: float,
                 interval: float = 0.1, on_silence=None):
        self.store, self.rank, self.interval = dist.PrefixStore("distree/heartbeat", store), rank, interval
        self.on_silence = on_silence  # on_silence(peer, why), from this thread
        self.watch = Watch(watch, dead_after, startup_s, time.monotonic())
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()
        if on_silence is not None:  # its own thread: a store call can block for the store's whole timeout
            threading.Thread(target=self._watch, daemon=True, name="watchdog").start()

    def silence(self, peer: int) -> str | None:
        """Why peer counts as lost now (Watch.silence); None while it does not."""
        return self.watch.silence(peer, time.monotonic())

    def _beat(self) -> None:
        while True:
            try:
                self.store.add(str(self.rank), 1)
                for peer in self.watch.last_value:
                    value = self.store.add(str(peer), 0)  # a read that never blocks on a missing key
                    self.watch.saw(peer, value, time.monotonic())
            except RuntimeError:  # DistStoreError and connection errors
                pass  # the store is unreachable: nothing moves, so every watched peer falls silent
            time.sleep(self.interval)

    def _watch(self) -> None:
        while True:
            for peer in self.watch.last_change:
                why = self.silence(peer)
                if why is not None:
                    self.on_silence(peer, why)
            time.sleep(self.interval)
