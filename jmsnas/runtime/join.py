"""What a device takes from each message, and the join that waits for parallel branches.

A part of a chain takes all its inputs from one message. A part of a branched bundle takes from each
producer only the inputs whose ``sources`` name it (``expected_inputs``); a part fed by several
producers (the join after parallel branches) collects them in a ``Gather`` until every input has come,
then runs once. Each message names its producer by its last hop's ``part`` (none: the feeder).

The hop records of the branches are merged into the answer (``merged_hops``): every record once, plus
one *arrival* record per message at the join (its wire time from the producer), so the runtime report
can time each link of the mesh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jmsnas.export.manifest import CodecEntry, PartEntry, TensorEntry
from jmsnas.runtime.transport import Message

BEST = "best.logits"


def source_part(msg: Message) -> int:
    """The part that sent ``msg`` (its last hop's), or -1 for the feeder."""
    hops = msg.header.hops
    return int(hops[-1].get("part", -1)) if hops else -1


def expected_inputs(part: PartEntry, src: int) -> tuple[list[TensorEntry], CodecEntry | None]:
    """The inputs (in the part's order) that producer ``src`` sends this part, and their decoder."""
    if part.sources is None:
        return part.inputs, part.decoder
    slots = [i for i, (m, _) in enumerate(part.sources) if m == src]
    decoders = part.decoders or [None] * len(part.inputs)
    return [part.inputs[i] for i in slots], (decoders[slots[0]] if slots else None)


def check_sample(msg: Message, part: PartEntry, token: str) -> str | None:
    """Why ``msg`` is not a sample this part can run (or, at a join, one of its producers' shares), or None."""
    h = msg.header
    if h.kind != "sample":
        return f"kind {h.kind!r}: this device takes 'sample' or 'ping'"
    if h.manifest != token:
        return f"manifest sha256 {h.manifest[:12]!r}... is not this device's bundle ({token[:12]}...)"
    if not h.reply_to or h.sample < 0:
        return "a sample needs reply_to (the feeder's HOST:PORT) and a sample id >= 0"
    metas = h.tensors[:-1] if h.best is not None else h.tensors
    if h.best is not None and (not h.tensors or h.tensors[-1].name != BEST):
        return f"header.best is set but the last tensor is not {BEST!r}"
    inputs, codec = expected_inputs(part, source_part(msg))
    if not inputs:
        return f"part {source_part(msg)} sends nothing to this part"
    if [t.name for t in metas] != [t.name for t in inputs]:
        return f"tensors {[t.name for t in metas]}, this part takes {[t.name for t in inputs]} from that sender"
    for meta, want in zip(metas, inputs, strict=True):
        fixed = [1 if i == 0 and d is None else d for i, d in enumerate(want.shape)]
        if meta.dtype != want.dtype or len(meta.shape) != len(fixed) or any(
                d is not None and d != s for d, s in zip(fixed, meta.shape, strict=True)):
            return (f"tensor {meta.name!r} is {meta.dtype}{meta.shape}, this part takes {want.dtype}{fixed} "
                    "(one sample per message)")
    got = None if h.codec is None else (h.codec.compressor, h.codec.params)
    if got != (None if codec is None else (codec.compressor, codec.params)):
        return f"codec {got} does not match this part's decoder {None if codec is None else codec.compressor!r}"
    return None


@dataclass
class _Pending:
    first: float
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    arrivals: list[tuple[Message, float, float]] = field(default_factory=list)


class Gather:
    """A join's pending samples: ``add`` returns the arrivals and inputs once all of ``names`` have come.

    Args:
        names: the part's input names.
        deadline_s: a sample whose inputs are not all in this long after the first one is given up
            (``expire``): a producer that could not send answers the sample itself, and the feeder
            feeds again what nobody answered.
    """

    def __init__(self, names: list[str], deadline_s: float, clock=time.monotonic) -> None:
        self.names, self.deadline_s, self.clock = names, deadline_s, clock
        self.pending: dict[tuple[str, int, int], _Pending] = {}

    def add(self, msg: Message, recv_at: float, decode_ms: float) -> _Pending | None:
        h = msg.header
        entry = self.pending.setdefault((h.run, h.sample, h.attempt), _Pending(self.clock()))
        entry.arrays.update({k: v for k, v in msg.named().items() if k != BEST})
        entry.arrivals.append((msg, recv_at, decode_ms))
        if all(n in entry.arrays for n in self.names):
            del self.pending[(h.run, h.sample, h.attempt)]
            return entry
        return None

    def expire(self) -> list[tuple[str, int, int]]:
        """Drop (and return the keys of) the samples that waited past the deadline."""
        now = self.clock()
        gone = [k for k, e in self.pending.items() if now - e.first > self.deadline_s]
        for k in gone:
            del self.pending[k]
        return gone


def merged_hops(arrivals: list[tuple[Message, float, float]], device: str, part: int) -> list[dict[str, Any]]:
    """Every producer's hop records once (in arrival order), then one arrival record per message here."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    for msg, _, _ in arrivals:
        for hop in msg.header.hops:
            key = (hop.get("part"), hop.get("to_part"))
            if key not in seen:
                seen.add(key)
                out.append(hop)
    for msg, recv_at, decode_ms in arrivals:
        last = msg.header.hops[-1] if msg.header.hops else None
        out.append({"device": device, "part": part, "from_part": source_part(msg), "arrival": True,
                    "recv_at": recv_at, "decode_ms": decode_ms,
                    "wire_ms": None if last is None else 1e3 * (recv_at - last["link_start"])})
    return out
