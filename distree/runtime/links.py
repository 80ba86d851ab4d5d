"""A link to one peer rank: ordered sends that never block the caller, and optionally a receiver.

Why threads: a gloo send blocks until the peer posts its receive, a gloo receive cannot be
cancelled, `Work.is_completed()` never turns true for gloo point-to-point work, and
`Work.wait(timeout)` closes the connection to the peer when it times out. So:

* send: `isend` from the caller (the transfer starts at once), and a per-link thread waits for
  each send to finish, in order, so a stalled peer never blocks the caller. With an emulated
  link the thread sleeps the link's delay first and then sends, as a radio transmits while
  its device computes; the link model can change between sends (a `link` fault), each message
  pays the model in force when it was sent.
* receive (the aggregator's side): a per-link thread receives fixed-size messages in a loop
  and puts them in an inbox that the caller reads with a deadline (`queue.get(timeout=...)`),
  which it can give up on at no cost. A peer that dies closes its sockets: the blocked call
  raises and the link reports the peer lost. A receive left pending on a frozen peer stays
  blocked; the process leaves with os._exit, which does not wait for it.
"""
import queue
import random
import re
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distree.runtime.netem import LinkModel


@dataclass
class Arrival:
    """What a link puts in the inbox: a message from peer, or the error that ended the link."""

    peer: int  # rank
    msg: torch.Tensor = None  # int32 (M,), on the CPU
    error: str = None
    received_s: float = 0.0  # perf_counter time the receiving thread got it


class Link:
    """Ordered messages to one peer rank; with recv_numel, also every message from it, into inbox."""

    def __init__(self, peer: int, inbox: queue.Queue = None, model: LinkModel = LinkModel(), seed: int = 0,
                 device: torch.device = torch.device("cpu"), recv_numel: int = 0):
        self.peer, self.inbox, self.model, self.device = peer, inbox, model, device
        self.error = None  # set once a send failed
        self._emulated = False  # whether any send so far went through an emulated link
        self._rng = random.Random(seed)
        self._out = queue.SimpleQueue()  # (message to delay and send) or (send in flight to wait for)
        self._pending = 0  # sends not finished yet
        self._idle = threading.Condition()
        threading.Thread(target=self._send_loop, daemon=True, name=f"send-{peer}").start()
        if recv_numel:
            threading.Thread(target=self._recv_loop, args=(recv_numel,), daemon=True, name=f"recv-{peer}").start()

    def send(self, msg: torch.Tensor) -> None:
        """Send msg (int32 (M,)) to the peer after the link's delay; returns at once."""
        with self._idle:
            self._pending += 1
        msg, model = msg.to(self.device), self.model  # a `link` fault may change the model between sends
        self._emulated |= model.active
        if self._emulated:  # once emulated, always through the thread, so no send overtakes a delayed one
            self._out.put((msg, model, None))
        else:
            self._out.put((None, None, dist.isend(msg, self.peer)))

    def drain(self, timeout: float) -> bool:
        """Wait up to timeout seconds for every send to finish; whether they did."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _send_loop(self) -> None:
        while True:
            msg, model, work = self._out.get()
            try:
                if msg is not None:
                    time.sleep(model.seconds(msg.numel() * msg.element_size(), self._rng))
                    dist.send(msg, self.peer)
                else:
                    work.wait()
            except RuntimeError as err:
                self.error = f"send failed: {first_line(err)}"
                if self.inbox is not None:
                    self.inbox.put(Arrival(self.peer, error=self.error))
                return
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _recv_loop(self, numel: int) -> None:
        while True:
            buf = torch.empty(numel, dtype=torch.int32, device=self.device)
            try:
                dist.recv(buf, self.peer)
            except RuntimeError as err:
                self.inbox.put(Arrival(self.peer, error=f"receive failed: {first_line(err)}"))
                return
            self.inbox.put(Arrival(self.peer, msg=buf.cpu(), received_s=time.perf_counter()))


def first_line(err: Exception) -> str:
    """The gist of a c10d/gloo error: its first sentence, without the source location prefix."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip())  # "[.../pair.cc:537] Read error ..." -> "Read error ..."
    return text.split(". ")[0].splitlines()[0] if text else type(err).__name__
