"""The runtime's wire: framed messages over ZeroMQ (pyzmq), no pickle, every wait bounded.

Why ZeroMQ (pyzmq, libzmq 4.3): a message is a list of frames sent and received whole, so a JSON
header and one raw buffer per tensor travel without a container format of ours; there is no broker
to run beside the devices; ``poll`` gives a timeout on every receive; a socket reconnects by itself
when its peer comes back on the same address. gRPC would need a schema compiler and a server
framework for what is two socket types here.

A message is ``[header, tensor_0, ..., tensor_n]``: ``header`` is UTF-8 JSON (``Header``: the wire
version, the kind, the run and sample id, the sha256 of the bundle's ``manifest.json``, each
tensor's name, shape and dtype, the cut's compressor and parameters, timings), each tensor frame
the C-order bytes of that array. ``unpack`` checks all of it (an unknown key, a dtype not in
``DTYPES``, a frame whose size does not fit its shape) and raises `WireError` naming the field.

Two socket roles: a device *receives* on a ROUTER it binds (``Receiver``) and acknowledges every
sample at once (``ack``) or refuses it (``error``, with the reason); a sender holds a DEALER to the
next hop (``Sender``) and waits for that acknowledgement with a timeout, resending on a fresh socket
(the peer may have restarted) a bounded number of times. Answers go back to the feeder on a
PUSH socket (``Pusher``) to the address the sample names (``reply_to``).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jmsnas.errors import JmsnasError

#: The ``v`` a header is written with; a header with another version is refused.
WIRE_VERSION = 1
#: The tensor dtypes the wire carries (numpy names, as the manifest writes them).
DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"})
Kind = Literal["sample", "ack", "error", "answer", "ping"]


class WireError(JmsnasError):
    """A message that is not a valid jmsnas runtime message (bad header, dtype, shape or frame count)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorMeta(_Strict):
    """One tensor frame: its name, shape and dtype."""

    name: str
    shape: list[int] = Field(max_length=8)
    dtype: str


class Codec(_Strict):
    """The compressor of the cut a sample crosses (the receiver checks it against its decoder)."""

    compressor: str
    params: dict[str, Any] = {}


class Header(_Strict):
    """The JSON frame of every message.

    ``hops`` holds one timing record per device a sample went through (``serve.hop_record``);
    ``best`` names the exit (``device``, ``exit``) of a sample's last tensor ``best.logits``, the
    answer a device falls back on when its next hop is gone; ``answer`` where and how a sample was
    answered; ``error`` why a message was refused; ``skip`` the Exit Predictor's per-exit flags (a bundle
    with one: the first device sets them, a device whose exit is skipped runs the part without its head).
    """

    v: int
    kind: Kind
    run: str = ""
    sample: int = Field(default=-1, ge=-1)
    attempt: int = Field(default=0, ge=0)
    manifest: str = ""
    tensors: list[TensorMeta] = []
    codec: Codec | None = None
    reply_to: str | None = None
    hops: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    skip: list[bool] | None = None
    answer: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Message:
    """A received message: its validated header and its tensors, in the header's order."""

    header: Header
    tensors: tuple[np.ndarray, ...]

    def named(self) -> dict[str, np.ndarray]:
        """The tensors by name."""
        return {t.name: a for t, a in zip(self.header.tensors, self.tensors, strict=True)}


def pack(header: Mapping[str, Any], tensors: Sequence[tuple[str, np.ndarray]] = ()) -> list[bytes]:
    """The frames of a message: the header (with ``v`` and the tensor list filled in), then each tensor's bytes."""
    metas, frames = [], []
    for name, array in tensors:
        a = np.asarray(array)
        a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes a scalar 1-D)
        if a.dtype.name not in DTYPES:
            raise WireError(f"tensor {name!r} has dtype {a.dtype.name}; the wire carries {sorted(DTYPES)}")
        metas.append({"name": name, "shape": list(a.shape), "dtype": a.dtype.name})
        frames.append(a.tobytes())
    head = {**header, "v": WIRE_VERSION, "tensors": metas}
    Header.model_validate(head)  # a bug of ours, not the peer's: fail where it is made
    return [json.dumps(head, separators=(",", ":")).encode(), *frames]


def rehead(frame: bytes, **changes: Any) -> bytes:
    """A header frame made by ``pack`` with some fields replaced (``hops`` timed after framing)."""
    return json.dumps({**json.loads(frame), **changes}, separators=(",", ":")).encode()


def unpack(frames: Sequence[bytes | zmq.Frame]) -> Message:
    """Parse and check a message's frames.

    Raises:
        WireError: no frames, a header that is not JSON or not a ``Header`` (naming the field), another
            wire version, a frame count or frame size that does not match the header's tensors.
    """
    if not frames:
        raise WireError("empty message: need a JSON header frame")
    raw = [f.bytes if isinstance(f, zmq.Frame) else bytes(f) for f in frames]
    try:
        data = json.loads(raw[0].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header frame is not UTF-8 JSON ({e})", field="header") from None
    try:
        header = Header.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "header"
        raise WireError(err["msg"], field=f"header.{field}") from None
    if header.v != WIRE_VERSION:
        raise WireError(f"wire version {header.v}, this runtime speaks {WIRE_VERSION}", field="header.v")
    if len(raw) - 1 != len(header.tensors):
        raise WireError(f"header lists {len(header.tensors)} tensors but {len(raw) - 1} frames follow",
                        field="header.tensors")
    pairs = enumerate(zip(header.tensors, raw[1:], strict=True))
    return Message(header, tuple(_array(meta, buf, i) for i, (meta, buf) in pairs))


def _array(meta: TensorMeta, buf: bytes, i: int) -> np.ndarray:
    if meta.dtype not in DTYPES:
        raise WireError(f"dtype {meta.dtype!r} is not one of {sorted(DTYPES)}", field=f"header.tensors[{i}].dtype")
    if any(d < 0 for d in meta.shape):
        raise WireError(f"negative axis in shape {meta.shape}", field=f"header.tensors[{i}].shape")
    dtype = np.dtype(meta.dtype)
    expected = int(np.prod(meta.shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        raise WireError(f"tensor {meta.name!r} frame has {len(buf)} bytes, shape {meta.shape} of {meta.dtype} "
                        f"needs {expected}", field=f"header.tensors[{i}]")
    return np.frombuffer(buf, dtype=dtype).reshape(meta.shape).copy()  # writable, owned


def endpoint(address: str, *, what: str = "--listen") -> str:
    """``tcp://HOST:PORT`` of ``HOST:PORT`` (or of a ``tcp://`` address).

    Raises:
        WireError: not ``HOST:PORT`` with a port in 1..65535 (``what`` names the option).
    """
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise WireError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:5601)", field=what)
    return f"tcp://{host}:{int(port)}"


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free now (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)  # a restarted peer is found within ~0.5 s
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    return sock


class Receiver:
    """A bound ROUTER: ``recv`` returns ``(peer, Message)``, ``(peer, WireError)`` or None on timeout."""

    def __init__(self, ctx: zmq.Context, address: str, bind_timeout_s: float = 5.0) -> None:
        self.sock = _socket(ctx, zmq.ROUTER)
        self.decode_ms = 0.0  # how long the last message took to unpack and check
        self.received_at = 0.0  # when it was taken off the socket (time.monotonic)
        end = time.monotonic() + bind_timeout_s
        while True:  # a socket just closed here releases its port asynchronously
            try:
                self.sock.bind(endpoint(address))
                return
            except zmq.ZMQError as e:
                if e.errno != zmq.EADDRINUSE or time.monotonic() > end:
                    self.sock.close(linger=0)
                    raise WireError(f"cannot listen on {address}: {e}", field="--listen") from None
                time.sleep(0.05)

    def recv(self, timeout_ms: int) -> tuple[bytes, Message | WireError] | None:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        peer, *frames = self.sock.recv_multipart(copy=True)
        start = self.received_at = time.monotonic()
        try:
            return peer, unpack(frames)
        except WireError as e:
            return peer, e
        finally:
            self.decode_ms = 1e3 * (time.monotonic() - start)

    def reply(self, peer: bytes, header: Mapping[str, Any]) -> None:
        """Send ``header`` (``ack`` or ``error``) back to ``peer``; never blocks."""
        try:
            self.sock.send_multipart([peer, *pack(header)], flags=zmq.NOBLOCK)
        except zmq.Again:  # the peer went away; it will resend
            pass

    def close(self) -> None:
        self.sock.close(linger=0)


class Sender:
    """A DEALER to one next hop, with acknowledged, retried sends.

    Args:
        ctx: the process's ZeroMQ context.
        address: the next hop's ``HOST:PORT``.
        timeout_ms: how long one attempt waits for the acknowledgement.
        attempts: attempts per message (each on a fresh socket after the first fails).
    """

    def __init__(self, ctx: zmq.Context, address: str, timeout_ms: int = 1000, attempts: int = 3) -> None:
        self.ctx, self.address = ctx, endpoint(address, what="--next")
        self.timeout_ms, self.attempts = timeout_ms, max(1, attempts)
        self.last_ack: Header | None = None  # the acknowledgement of the last delivered message
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = _socket(self.ctx, zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a live connection: a dead peer is seen at once
        sock.connect(self.address)
        return sock

    def reconnect(self) -> None:
        """Drop the socket (and anything queued on it) and connect a fresh one."""
        self.sock.close(linger=0)
        self.sock = self._connect()

    def send(self, frames: Sequence[bytes], sample: int, drop_first: bool = False) -> tuple[bool, str]:
        """Send until the next hop acknowledges ``sample``; returns ``(delivered, reason if not)``.

        An ``error`` reply is final (the peer refused the message; resending it would not help).
        ``drop_first`` loses the first attempt on purpose (link fault emulation).
        """
        reason = "no attempt made"
        for attempt in range(self.attempts):
            if attempt:
                self.reconnect()
            if not (drop_first and attempt == 0):
                if not self.sock.poll(self.timeout_ms, zmq.POLLOUT):  # writable once a connection is up
                    reason = f"{self.address} unreachable for {self.timeout_ms} ms"
                    continue
                try:
                    self.sock.send_multipart(list(frames), flags=zmq.NOBLOCK)
                except zmq.Again:
                    reason = f"{self.address} unreachable"
                    continue
            ok, reason = self._await_ack(sample)
            if ok or reason.startswith("refused"):
                return ok, reason
        return False, reason

    def _await_ack(self, sample: int) -> tuple[bool, str]:
        end = time.monotonic() + self.timeout_ms / 1e3
        while (left := end - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1e3)), zmq.POLLIN):
                break
            try:
                header = unpack(self.sock.recv_multipart()).header
            except WireError:
                continue
            if header.sample != sample:
                continue  # a late acknowledgement of an earlier message
            if header.kind == "error":
                return False, f"refused by {self.address}: {header.error}"
            self.last_ack = header
            return header.kind == "ack", ""
        return False, f"no acknowledgement from {self.address} within {self.timeout_ms} ms"

    def close(self) -> None:
        self.sock.close(linger=0)


class Pusher:
    """PUSH sockets to the feeders that samples name in ``reply_to`` (one per address, made on first use)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx, self.socks = ctx, {}

    def push(self, address: str, frames: Sequence[bytes]) -> bool:
        """Queue ``frames`` for ``address``; False if the queue is full (the feeder is gone)."""
        sock = self.socks.get(address)
        if sock is None:
            sock = self.socks[address] = _socket(self.ctx, zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)  # let queued answers out when the server stops
            sock.connect(endpoint(address, what="reply_to"))
        try:
            sock.send_multipart(list(frames), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


def deliver_late(ctx: zmq.Context, address: str, frames: list[bytes]) -> None:
    """Deliver a stalled message late, on a socket of its own (the sender's is its thread's)."""
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(address)
        sock.send_multipart(frames)
    except zmq.ZMQError:  # the context is closing: the server stopped
        pass
    finally:
        sock.close()
