"""One device of a bundle as a server: receive a sample, run the device's part, exit or send it on.

``DeviceServer`` is what ``python -m jmsnas.serve BUNDLE --device NAME --listen HOST:PORT --next
HOST:PORT`` runs. Threads, each owning its sockets (ZeroMQ sockets are not thread-safe); a part that
feeds parallel branches sends each its tensors on a lane of its own, and a join waits for all (``join``):

- *receive*: the bound ROUTER (``transport.Receiver``). Every message is checked (``check_sample``:
  the sha256 of ``manifest.json`` must be this device's, the tensors the part's inputs by name,
  dtype and shape with one sample on the batch axis, the cut's compressor this part's decoder);
  a bad one gets an ``error`` reply with the reason and is logged, a good one an ``ack`` and goes
  to the compute queue. A resent sample (its acknowledgement was lost) is acknowledged again and
  not run twice by this process; a restarted device has forgotten what its predecessor ran, so a
  resend that reaches it can be answered a second time (the feeder drops and counts it).
- *compute*: runs the part (``Bundle.runners[m]``, ONNX Runtime by default). An **emulated**
  device (an analytic one: no measured profile) runs its part on this CPU and then waits until its
  predicted compute time (the plan's) has passed. An exit decides as ``Bundle.run_exits`` does
  (``Bundle.exit_confidence``: the top-1 softmax probability in float64, or the manifest's decision
  unit, against the threshold): a sample that leaves is answered here. With an Exit Predictor in the
  bundle the first device runs it on the input; the sample carries its per-exit ``skip`` flags, and a
  device whose exit it skips runs the part without the head (Algorithm 1, as ``run_exits``).
- *send*: the next hop's DEALER (``transport.Sender``) behind the link emulator
  (``links.TokenBucket``); answers go to the feeder's address (``reply_to``). When the next hop
  does not acknowledge within its attempts, the device answers alone from the best exit the
  sample has passed (its own, or the one it carries as ``best.logits``): "client only" mode,
  marked ``fell_back``. A sample with no exit behind it is answered ``failed``, never dropped.

Every sample's header collects one timing record per device (``hops``): time queued, compute,
emulated wait, framing (encode), link wait, and the wire time from the previous device's hand-over
to the link until this device received it (``time.monotonic`` is one clock per machine: across
machines only the per-device figures mean anything).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import zmq

from jmsnas.errors import ConfigError
from jmsnas.export.manifest import MANIFEST, Backend, sha256_file
from jmsnas.runtime.bundle import load_bundle
from jmsnas.runtime.graph import PartGraph, part_index
from jmsnas.runtime.join import BEST, Gather, check_sample, merged_hops, source_part
from jmsnas.runtime.links import LinkSpec, TokenBucket
from jmsnas.runtime.plan_times import predicted_times
from jmsnas.runtime.transport import Message, Pusher, Receiver, Sender, WireError, deliver_late, pack, rehead

log = logging.getLogger("jmsnas.serve")


@dataclass(frozen=True)
class ServeOptions:
    """How one device serves.

    Args:
        backend: the part's file format (``onnx`` or ``torchscript``).
        emulated: wait after each part until the plan's predicted compute time has passed.
        link: the outgoing link to emulate (None: send at once).
        links: per next hop (a part feeding several: the root of parallel branches), its link; where
            absent, ``link``.
        timeout_ms: how long one send waits for the next hop's acknowledgement.
        attempts: sends per sample before the device answers alone.
        drop: sample ids whose first send on the outgoing link is lost (a fault to test with).
        stall: sample ids whose first send is held back ``stall_ms`` (longer than the sender waits) and
            then delivered: the sender resends meanwhile, and the receiver must run the sample once.
        bandwidth_mbps: the adaptive cut's bandwidth: exits and predictor use the bundle's adaptive thresholds.
    """

    backend: Backend = "onnx"
    emulated: bool = False
    link: LinkSpec | None = None
    timeout_ms: int = 1000
    attempts: int = 3
    drop: frozenset[int] = field(default_factory=frozenset)
    stall: frozenset[int] = field(default_factory=frozenset)
    stall_ms: int = 2000
    links: tuple[LinkSpec | None, ...] = ()
    bandwidth_mbps: float | None = None


def manifest_hash(bundle_dir: str | Path) -> str:
    """The sha256 of a bundle's ``manifest.json``: the token every message carries."""
    return sha256_file(Path(bundle_dir) / MANIFEST)


class DeviceServer:
    """One device's part of a bundle, served on ``listen`` and sending on to ``next_hop`` (None: the last).

    ``next_hop`` is one address, or one per part this part feeds (the root of parallel branches feeds
    each branch), in part order; a part fed by several (the join) waits for all of them (``join.Gather``).

    Raises:
        BundleError: a bad bundle (hashes are checked, sources too).
        ConfigError: a device the bundle does not name, or next hops that are not one per part fed.
    """

    def __init__(self, bundle_dir: str | Path, device: str, listen: str, next_hop: str | Sequence[str] | None,
                 options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        self.bundle = load_bundle(bundle_dir, self.options.backend)
        parts = self.bundle.spec.parts
        self.m = part_index(parts, device, Path(bundle_dir) / MANIFEST)
        self.graph = PartGraph.of(parts, Path(bundle_dir) / MANIFEST)
        self.part, self.device, self.listen = parts[self.m], device, listen
        fed = self.graph.consumer_parts(self.m)
        hops = [] if next_hop is None else [next_hop] if isinstance(next_hop, str) else list(next_hop)
        self.last = not fed
        if len(hops) != len(fed):
            raise ConfigError(f"device {device!r} is part {self.m} of {len(parts)}: "
                              + ("the last part sends no further; drop --next" if self.last else
                                 f"give one --next per device it feeds: {[parts[j].device for j in fed]}"),
                              field="--next")
        self.next_hops, self.token = dict(zip(fed, hops, strict=True)), manifest_hash(bundle_dir)
        self.exit_k = sum(p.exit is not None for p in parts[: self.m])  # this part's exit index, if any
        self.lams, self.gams, point = self.bundle.operating_point(self.options.bandwidth_mbps)
        if point is not None:  # reported: a repaired point, or one that cannot hold tau
            log.info("adaptive thresholds at %g Mbit/s: %s", self.options.bandwidth_mbps, point.as_dict())
        self.predicted_ms = predicted_times(self.bundle.spec).device_ms[self.m]
        self.work: queue.Queue = queue.Queue(maxsize=256)
        self.out: queue.Queue = queue.Queue(maxsize=256)
        self.stop = threading.Event()
        self.seen: OrderedDict[tuple[str, int, int, int], None] = OrderedDict()
        wait_s = 3 * self.options.timeout_ms * self.options.attempts / 1e3  # every producer has retried by then
        self.gather = (Gather([t.name for t in self.part.inputs], wait_s)
                       if len(self.graph.producers[self.m]) > 1 else None)
        self._alone: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._alone_lock = threading.Lock()

    def serve(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` (or ``self.stop``) is set; every thread is joined and every socket closed."""
        if stop is not None:
            self.stop = stop
        ctx = zmq.Context()
        threads = [threading.Thread(target=self._send_loop, args=(ctx,), daemon=True),
                   threading.Thread(target=self._compute_loop, daemon=True)]
        try:
            receiver = Receiver(ctx, self.listen)
            for t in threads:
                t.start()
            log.info("device %s (part %d) listening on %s", self.device, self.m, self.listen)
            try:
                while not self.stop.is_set():
                    self._receive_one(receiver)
            finally:
                receiver.close()
        finally:
            self.stop.set()
            for t in threads:
                if t.is_alive():
                    t.join(timeout=5)
            ctx.destroy(linger=0)

    def _receive_one(self, receiver: Receiver) -> None:
        got = receiver.recv(100)
        if got is None:
            return
        peer, msg = got
        recv_at = receiver.received_at  # before decoding: the wire time ends here
        if isinstance(msg, WireError):
            log.warning("refused a malformed message: %s", msg)
            receiver.reply(peer, {"kind": "error", "error": str(msg)})
            return
        h = msg.header
        if h.kind == "ping":
            receiver.reply(peer, {"kind": "ack", "sample": h.sample, "answer": {"device": self.device, "part": self.m,
                                                                                "manifest": self.token}})
            return
        reason = check_sample(msg, self.part, self.token)
        if reason is not None:
            log.warning("refused sample %d: %s", h.sample, reason)
            receiver.reply(peer, {"kind": "error", "sample": h.sample, "error": reason})
            return
        key = (h.run, h.sample, h.attempt, source_part(msg))  # a join takes one message per producer
        if key not in self.seen:
            try:
                self.work.put_nowait((msg, recv_at, receiver.decode_ms))
            except queue.Full:  # not acknowledged: the sender resends, or answers alone
                log.warning("sample %d: %d samples queued already; not taken", h.sample, self.work.qsize())
                return
            self.seen[key] = None
            while len(self.seen) > 100_000:
                self.seen.popitem(last=False)
        else:
            log.info("sample %d (attempt %d) came again: acknowledged, not run twice", h.sample, h.attempt)
        receiver.reply(peer, {"kind": "ack", "sample": h.sample})

    def _compute_loop(self) -> None:
        while not self.stop.is_set():
            for _run, sample, attempt in self.gather.expire() if self.gather is not None else ():
                log.warning("sample %d (attempt %d): not every branch came; given up (its sender answers, or the "
                            "feeder feeds it again)", sample, attempt)
            try:
                msg, recv_at, decode_ms = self.work.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                item = self._take(msg, recv_at, decode_ms)
                if item is None:
                    continue  # a join waiting for its other branches
            except Exception as e:  # a bug or a broken part: answer the sample, keep serving
                log.exception("part %d failed on sample %d", self.m, msg.header.sample)
                hop = {"device": self.device, "part": self.m, "emulated": self.options.emulated}
                item = ("answer", msg, {**_failed(f"part {self.m} on {self.device} raised {e!r}"), "hop": hop}, [])
            while not self.stop.is_set():
                try:
                    self.out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _take(self, msg: Message, recv_at: float, decode_ms: float) -> tuple[str, Message, dict[str, Any], list] | None:
        """Run the part on a sample once all its inputs are in; None while a join still waits."""
        if self.gather is None:
            return self._run(msg, recv_at, decode_ms, msg.named())
        done = self.gather.add(msg, recv_at, decode_ms)
        if done is None:
            return None
        last, at, dec = done.arrivals[-1]
        joined = Message(last.header.model_copy(update={"hops": merged_hops(done.arrivals, self.device, self.m)}),
                         last.tensors)
        return self._run(joined, at, dec, done.arrays)

    def _run(self, msg: Message, recv_at: float, decode_ms: float,
             arrays: dict[str, Any]) -> tuple[str, Message, dict[str, Any], list]:
        """Run the part on one sample; returns what the send thread does with it."""
        start = time.monotonic()
        inputs = tuple(torch.from_numpy(arrays[t.name]) for t in self.part.inputs)
        skips = msg.header.skip
        if self.m == 0 and self.bundle.spec.predictor is not None:  # the Exit Predictor decides, once
            scores = self.bundle.exit_scores(inputs[0])
            skips = [bool(s < g) for s, g in zip(scores[0].tolist(), self.gams or [], strict=True)]
        skipped = self.part.exit is not None and skips is not None and skips[self.exit_k]
        with torch.no_grad():
            outs = (self.bundle.skip_runners if skipped else self.bundle.runners)[self.m](inputs)
        computed = time.monotonic()
        waited = 0.0
        if self.options.emulated and (left := start + self.predicted_ms / 1e3 - computed) > 0:
            time.sleep(left)
            waited = time.monotonic() - computed  # what was really waited (sleep returns no earlier)
        hop = {"device": self.device, "part": self.m, "emulated": self.options.emulated,
               "recv_at": recv_at, "decode_ms": decode_ms, "queue_ms": 1e3 * (start - recv_at) - decode_ms,
               "compute_ms": 1e3 * (computed - start),
               "emulated_wait_ms": 1e3 * waited, "predicted_ms": self.predicted_ms,
               "from_part": source_part(msg) if self.gather is None else None,
               "wire_ms": None if not msg.header.hops or self.gather is not None  # a join: its arrival records
               else 1e3 * (recv_at - msg.header.hops[-1]["link_start"])}
        best = (msg.header.best, msg.tensors[-1]) if msg.header.best is not None else None
        if self.part.exit is not None and not skipped:
            logits = outs[0].numpy()
            conf = float(self.bundle.exit_confidence(self.m, outs[0]).max())  # as run_exits decides
            if conf >= self.lams[self.exit_k]:
                return "answer", msg, {**_answered(self.device, self.exit_k), "hop": hop}, [("logits", logits)]
            best = ({"device": self.device, "exit": self.exit_k}, logits)
            outs = outs[1:]
        if self.last:
            return "answer", msg, {**_answered(self.device, self.exit_k), "hop": hop}, [("logits", outs[0].numpy())]
        parts = self.bundle.spec.parts
        sends = {j: [(parts[j].inputs[slot].name, outs[k].numpy()) for slot, k in pairs]
                 for j, pairs in self.graph.consumers[self.m]}
        return "forward", msg, {"hop": hop, "best": best, "skip": skips}, sends

    def _send_loop(self, ctx: zmq.Context) -> None:
        """Answers go out from here. A chain's one next hop is sent to from here too; a part feeding several
        gives each a lane of its own (a thread, its sender and its link), so parallel branches' links carry
        their copies at the same time."""
        inline = self._lane_tools(ctx, next(iter(self.next_hops)), 0) if len(self.next_hops) == 1 else None
        lanes = {j: queue.Queue(maxsize=256) for j in self.next_hops} if inline is None else {}
        threads = [threading.Thread(target=self._lane, args=(ctx, j, i, lanes[j]), daemon=True)
                   for i, j in enumerate(lanes)]
        for t in threads:
            t.start()
        pusher = Pusher(ctx)
        try:
            while not self.stop.is_set():
                try:
                    what, msg, info, tensors = self.out.get(timeout=0.1)
                except queue.Empty:
                    continue
                if what != "forward":
                    self._answer(pusher, msg, info, tensors)
                    continue
                for n, (j, sends) in enumerate(tensors.items()):
                    hop = {**info["hop"], "to_part": j}
                    if n:  # the part received and ran the sample once: that is in the first copy only
                        for k in ("decode_ms", "queue_ms", "compute_ms", "emulated_wait_ms", "wire_ms"):
                            hop.pop(k, None)
                    if inline is not None:
                        self._send_on(*inline, pusher, msg, {**info, "hop": hop}, sends)
                    else:
                        self._put(lanes[j], (msg, {**info, "hop": hop}, sends))
        finally:
            pusher.close()
            if inline is not None:
                inline[0].close()
            for t in threads:
                t.join(timeout=5)

    def _put(self, lane: queue.Queue, item: tuple) -> None:
        while not self.stop.is_set():
            try:
                lane.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _lane_tools(self, ctx: zmq.Context, j: int, i: int) -> tuple[Sender, TokenBucket]:
        links = self.options.links
        spec = (links[i] if i < len(links) else None) or self.options.link or LinkSpec(0.0, source="none")
        return Sender(ctx, self.next_hops[j], self.options.timeout_ms, self.options.attempts), TokenBucket(spec)

    def _lane(self, ctx: zmq.Context, j: int, i: int, lane: queue.Queue) -> None:
        sender, bucket = self._lane_tools(ctx, j, i)
        pusher = Pusher(ctx)
        try:
            while not self.stop.is_set():
                try:
                    msg, info, tensors = lane.get(timeout=0.1)
                except queue.Empty:
                    continue
                self._send_on(sender, bucket, pusher, msg, info, tensors)
        finally:
            pusher.close()
            sender.close()

    def _send_on(self, sender: Sender, bucket: TokenBucket, pusher: Pusher, msg: Message, info: dict[str, Any],
                 tensors: list) -> None:
        what, info, tensors = self._forward(sender, bucket, msg, info, tensors)
        if what == "answer" and self._first_alone(msg):
            self._answer(pusher, msg, info, tensors)

    def _first_alone(self, msg: Message) -> bool:
        """Whether this device has not yet answered ``msg`` alone (a root whose several branch sends failed)."""
        h = msg.header
        with self._alone_lock:
            key = (h.run, h.sample, h.attempt)
            if key in self._alone:
                return False
            self._alone[key] = None
            while len(self._alone) > 10_000:
                self._alone.popitem(last=False)
            return True

    def _forward(self, sender: Sender, bucket: TokenBucket, msg: Message, info: dict[str, Any],
                 tensors: list) -> tuple[str, dict[str, Any], list]:
        """Send one sample on; on failure, what the device answers instead."""
        h, hop, best = msg.header, info["hop"], info["best"]
        wire = sum(a.nbytes for _, a in tensors)
        hop["link_start"] = time.monotonic()
        hop["link_wait_ms"] = 1e3 * bucket.send_delay(wire)
        start = time.monotonic()
        extra = [] if best is None else [(BEST, best[1])]
        codec = self.part.encoder
        head = {"kind": "sample", "run": h.run, "sample": h.sample, "attempt": h.attempt, "manifest": self.token,
                "reply_to": h.reply_to, "hops": [*h.hops, hop], "best": None if best is None else best[0],
                "skip": info.get("skip"),
                "codec": None if codec is None else {"compressor": codec.compressor, "params": codec.params}}
        frames = pack(head, tensors + extra)
        hop["encode_ms"], hop["wire_bytes"] = 1e3 * (time.monotonic() - start), wire
        frames[0] = rehead(frames[0], hops=[*h.hops, hop])  # the header again, with its own framing time
        first = h.attempt == 0
        if first and h.sample in self.options.stall:
            threading.Timer(self.options.stall_ms / 1e3, deliver_late, (sender.ctx, sender.address, frames)).start()
        lose = first and (h.sample in self.options.drop or h.sample in self.options.stall)
        ok, reason = sender.send(frames, h.sample, drop_first=lose)
        if ok:
            return "sent", {}, []
        log.warning("sample %d: %s; answering here", h.sample, reason)
        if best is None:
            return "answer", {**_failed(reason), "hop": hop}, []
        return "answer", {**_answered(best[0]["device"], best[0]["exit"], reason), "hop": hop}, [("logits", best[1])]

    def _answer(self, pusher: Pusher, msg: Message, info: dict[str, Any], tensors: list) -> None:
        if not info:
            return  # sent on: the next hop answers
        h = msg.header
        hop = {**info.pop("hop"), "answered_at": time.monotonic()}
        frames = pack({"kind": "answer", "run": h.run, "sample": h.sample, "attempt": h.attempt,
                       "manifest": self.token, "hops": [*h.hops, hop], "answer": info}, tensors)
        if not pusher.push(h.reply_to, frames):
            log.error("sample %d: the feeder at %s takes no answers", h.sample, h.reply_to)


def _answered(device: str, exit_k: int, fell_back_reason: str | None = None) -> dict[str, Any]:
    return {"device": device, "exit": exit_k, "fell_back": fell_back_reason is not None,
            "reason": fell_back_reason, "failed": False}


def _failed(reason: str) -> dict[str, Any]:
    return {"device": None, "exit": None, "fell_back": True, "reason": reason, "failed": True}

