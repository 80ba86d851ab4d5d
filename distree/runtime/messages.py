"""The wire format: every message is one flat int32 tensor, a fixed header then a payload.

    header (6 x int32): MAGIC, kind, seq, policy, exit, micros
    payload: float32 values bit-cast into the int32 tail (none for decisions)

| kind       | direction            | payload                 | fields used                            |
| ---------- | -------------------- | ----------------------- | -------------------------------------- |
| INPUT      | aggregator -> device | image (C*H*W,)          | seq (sample id), policy, exit: SHADOW_RUN or 0 |
| END        | aggregator -> device | zeros, INPUT size       | none: the device stops                 |
| THRESHOLDS | aggregator -> device | T2..T6, zeros to INPUT size | seq (setting index on the policy's path), policy |
| FEATURE    | device -> aggregator | evidence (K,)           | seq, policy, exit (0-based), micros    |
| SHADOW     | device -> aggregator | exit 7's evidence (K,)  | seq, policy, exit (always 6), micros   |
| CONTINUE   | aggregator -> device | none                    | seq, exit: per-exit policies only      |
| STOP       | aggregator -> device | none                    | seq, exit: per-exit policies only      |

An INPUT whose exit field is SHADOW_RUN is a shadow sample: the device answers it as usual and
then also sends its evidence at exit 7 (SHADOW), so the aggregator can compare its answer with
the full-depth one. THRESHOLDS travels in an INPUT-sized message because the device's posted
receive has that size (as END does); its thresholds may be +-inf (never / always stop there)
but never NaN, and the rest of its payload must be zeros.

`micros` is the device's compute time for the message (from its input, or from the previous
decision, to the send), so the aggregator can split latency into compute and communication.
One tensor per message, not a header tensor and a payload tensor, so a device's answer is one
small transfer (24 + 4K bytes). Messages are built and checked through numpy views of the
tensor: a handful of torch calls per message cost more than the message's transfer on loopback. The receiver allocates its buffer, so shape and dtype are fixed
by the protocol; `decode` checks everything else (magic, kind, ranges, finite values) before
any value is used, and raises BadMessage otherwise.
"""
from dataclasses import dataclass

import numpy as np
import torch

from distree.policies import LAST_EXIT, NUM_THRESHOLDS

MAGIC = 0x44453031  # "DE01": protocol version 1
HEADER = 6
INPUT, END, FEATURE, CONTINUE, STOP, THRESHOLDS, SHADOW = 1, 2, 3, 4, 5, 6, 7
KIND_NAMES = {INPUT: "INPUT", END: "END", FEATURE: "FEATURE", CONTINUE: "CONTINUE", STOP: "STOP",
              THRESHOLDS: "THRESHOLDS", SHADOW: "SHADOW"}
SHADOW_RUN = LAST_EXIT  # in an INPUT's exit field: also run this sample to exit 7


class BadMessage(ValueError):
    """A received tensor that breaks the protocol; the receiver drops it and counts it."""


@dataclass
class Message:
    kind: int
    seq: int
    policy: int
    exit: int
    micros: int
    payload: torch.Tensor  # float32 (P,), empty for decisions; (5,) for THRESHOLDS


def encode(kind: int, seq: int = 0, policy: int = 0, exit: int = 0, payload: torch.Tensor | np.ndarray = None,
           micros: int = 0) -> torch.Tensor:
    """The int32 tensor (HEADER + P,) carrying one message; payload (a tensor or a numpy array) is flattened
    to float32."""
    if payload is None:
        body = np.empty(0, np.float32)
    elif isinstance(payload, np.ndarray):  # the aggregator's inputs: no torch call, which would release the GIL
        body = np.ascontiguousarray(payload, np.float32).reshape(-1)
    else:
        body = payload.detach().to("cpu", torch.float32).numpy().reshape(-1)
    msg = np.empty(HEADER + body.size, np.int32)
    msg[:HEADER] = (MAGIC, kind, seq, policy, exit, min(micros, 2**31 - 1))
    msg[HEADER:] = body.view(np.int32)  # bit-cast, not a conversion
    return torch.from_numpy(msg)


def encode_thresholds(index: int, policy: int, thresholds: torch.Tensor, input_numel: int) -> torch.Tensor:
    """A THRESHOLDS message: setting `index` of policy's path, thresholds (5,), padded to the INPUT size."""
    payload = torch.zeros(input_numel)  # (C*H*W,)
    payload[:NUM_THRESHOLDS] = thresholds
    return encode(THRESHOLDS, index, policy, 0, payload)


def message_size(payload_numel: int) -> int:
    """Number of int32 elements of a message with a payload of payload_numel floats."""
    return HEADER + payload_numel


def decode(msg: torch.Tensor, kinds: tuple, num_policies: int, num_exits: int, payload_numel: int,
           num_samples: int = None, num_settings: list = None) -> Message:
    """The checked message in msg, or BadMessage naming the first broken field.

    kinds: the kinds the receiver can accept here; payload_numel: the payload it expects for
    them (0 for decisions; END and THRESHOLDS carry INPUT-sized payloads); num_samples bounds
    seq; num_settings[p], the length of policy p's path (0: none), bounds a THRESHOLDS' seq.
    """
    if msg.dtype != torch.int32 or msg.dim() != 1 or msg.numel() < HEADER:
        raise BadMessage(f"expected a 1-D int32 message, got {msg.dtype} of shape {tuple(msg.shape)}")
    whole = msg.numpy()
    magic, kind, seq, policy, exit, micros = whole[:HEADER].tolist()
    if magic != MAGIC:
        raise BadMessage(f"bad magic {magic:#x} (expected {MAGIC:#x}): not a distree message or another version")
    if kind not in kinds:
        name = KIND_NAMES.get(kind, str(kind))
        raise BadMessage(f"unexpected kind {name}; expected one of {[KIND_NAMES[k] for k in kinds]}")
    if msg.numel() != HEADER + payload_numel:
        got = msg.numel() - HEADER
        raise BadMessage(f"{KIND_NAMES[kind]} message has {got} payload values, expected {payload_numel}")
    if not 0 <= policy < num_policies:
        raise BadMessage(f"policy index {policy} out of range [0, {num_policies})")
    if kind == THRESHOLDS:
        settings = num_settings[policy] if num_settings is not None else 0
        if not 0 <= seq < settings:
            raise BadMessage(f"setting index {seq} out of range [0, {settings}) for policy {policy}")
    elif seq < 0 or (num_samples is not None and seq >= num_samples):
        raise BadMessage(f"sample id {seq} out of range [0, {num_samples})")
    if not 0 <= exit < num_exits:
        raise BadMessage(f"exit index {exit} out of range [0, {num_exits})")
    if micros < 0:
        raise BadMessage(f"negative compute time {micros} us")
    payload = whole[HEADER:].view(np.float32)
    if kind in (INPUT, FEATURE, SHADOW) and not np.isfinite(payload).all():
        raise BadMessage(f"{KIND_NAMES[kind]} payload holds NaN or infinite values")
    if kind == THRESHOLDS:
        if payload.size < NUM_THRESHOLDS or np.isnan(payload[:NUM_THRESHOLDS]).any():
            raise BadMessage(f"THRESHOLDS payload needs {NUM_THRESHOLDS} thresholds, none NaN")
        if (payload[NUM_THRESHOLDS:] != 0).any():
            raise BadMessage("THRESHOLDS payload has values past its thresholds")
        payload = payload[:NUM_THRESHOLDS]
    return Message(kind, seq, policy, exit, micros, torch.from_numpy(payload))
