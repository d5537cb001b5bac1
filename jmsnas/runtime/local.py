"""The local launcher: one process per device on this machine, wired as the plan (chain or branches), fed samples.

``serve_local`` is what ``python -m jmsnas.serve BUNDLE --local`` runs. Each device is a
``python -m jmsnas.serve BUNDLE --device NAME --listen 127.0.0.1:PORT --next ...`` process, its links
emulated (``links``; a root of parallel branches has one per branch); the feeder sends samples to the
first device, one at a time (``rate=None``: each after the previous answer, the unloaded latency) or at
``rate`` samples per second (open loop: devices work on different samples at once), and collects the
answers on its own port. Every wait is bounded; every process started is ended in ``finally``.

Nothing is lost without being counted: a sample unanswered ``sample_deadline_s`` after it was fed is
fed again (a new ``attempt``; devices run an attempt once), at most ``refeeds`` times; a second answer
to a sample is counted as a duplicate and dropped; what is still unanswered at the end is ``lost``.
Faults to test with: ``kill`` a device's process after a given sample (and restart it on the same
port after a delay: it rejoins), ``drop`` the first send of given samples on a device's outgoing link,
``stall`` it (delivered after the sender has resent it).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from jmsnas.errors import JmsnasError
from jmsnas.export.manifest import MANIFEST, Backend
from jmsnas.io import write_json
from jmsnas.runtime.bundle import read_manifest
from jmsnas.runtime.graph import PartGraph
from jmsnas.runtime.links import LinkSpec, plan_links
from jmsnas.runtime.overhead import RuntimeOverhead
from jmsnas.runtime.report import Answer, runtime_report
from jmsnas.runtime.serve import manifest_hash
from jmsnas.runtime.transport import Sender, WireError, endpoint, free_ports, pack, unpack

log = logging.getLogger("jmsnas.serve")


@dataclass(frozen=True)
class Kill:
    """Kill ``device``'s process just before sample ``before_sample`` is fed; restart it ``restart_after_s`` later.

    Feeding goes on while the device is down; once restarted, feeding waits (bounded by the startup
    timeout) until it answers a ping, so the samples after it show it rejoined.
    """

    device: str
    before_sample: int
    restart_after_s: float | None = None


@dataclass(frozen=True)
class LocalRun:
    """How ``serve_local`` runs.

    Args:
        backend: the parts' file format.
        rate: samples per second (open loop); None feeds each sample after the previous answer.
        links: one per cut (None: ``plan_links`` of the manifest's plan, derived from its ``link_ms``).
        emulated: devices that wait until their predicted compute time (analytic devices).
        timeout_ms: one send's wait for an acknowledgement; attempts: sends per hop before falling back.
        sample_deadline_s: an unanswered sample is fed again after this long; refeeds: how often.
        startup_timeout_s: how long every device has to come up; run_timeout_s: the whole feed's limit.
        kill: process faults; drop: per device, samples whose first send on its outgoing link is lost;
            stall: per device, samples whose first send is delivered late (after the sender resent it).
        warmup: samples fed first and left out of the report (connections, first runs of each part).
        log_dir: where each device's log goes (None: a temporary folder beside ``runtime.json`` or cwd).
        overhead: the runtime's own cost on this machine (``overhead.measure_overhead``), added to the plan.
        bandwidth_mbps: told every device: the bundle's adaptive thresholds at this bandwidth of the adaptive cut.
    """

    backend: Backend = "onnx"
    rate: float | None = None
    links: tuple[LinkSpec, ...] | None = None
    emulated: frozenset[str] = frozenset()
    timeout_ms: int = 1000
    attempts: int = 3
    sample_deadline_s: float = 10.0
    refeeds: int = 2
    startup_timeout_s: float = 120.0
    run_timeout_s: float = 600.0
    kill: tuple[Kill, ...] = ()
    drop: dict[str, frozenset[int]] = field(default_factory=dict)
    stall: dict[str, frozenset[int]] = field(default_factory=dict)
    warmup: int = 0
    log_dir: Path | None = None
    overhead: RuntimeOverhead | None = None
    bandwidth_mbps: float | None = None


class _Device:
    """One device's server process: its command line, its log, start / kill / stop."""

    def __init__(self, name: str, cmd: list[str], log_path: Path) -> None:
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.pids: list[int] = []

    def start(self) -> None:
        with self.log_path.open("a") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1
        self.pids.append(self.proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: the process is gone when this returns."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def failed(self) -> str | None:
        """The log's tail if the process has exited, else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return self.log_path.read_text()[-2000:]


def _commands(bundle: Path, spec: Any, ports: list[int], run: LocalRun, links: Sequence[LinkSpec],
              log_dir: Path) -> list[_Device]:
    """One ``jmsnas.serve`` command per part, wired as the bundle's graph (a chain, or parallel branches)."""
    graph, devices, out = PartGraph.of(spec.parts, bundle / MANIFEST), [p.device for p in spec.parts], []
    by_cut = {(c.src, c.dst): link for c, link in zip(spec.plan.cuts, links, strict=True)}
    for m, name in enumerate(devices):
        cmd = [sys.executable, "-m", "jmsnas.serve", str(bundle), "--device", name, "--listen",
               f"127.0.0.1:{ports[m]}", "--backend", run.backend, "--timeout-ms", str(run.timeout_ms),
               "--attempts", str(run.attempts), "--parent", str(os.getpid())]
        fed = graph.consumer_parts(m)
        if fed:
            hops = [by_cut[(name, devices[j])] for j in fed]
            cmd += ["--next", *(f"127.0.0.1:{ports[j]}" for j in fed),
                    "--link", *(f"{link.bandwidth_mbps!r},{link.rtt_ms!r}" for link in hops)]
        if name in run.emulated:
            cmd.append("--emulated")
        if run.bandwidth_mbps is not None:
            cmd += ["--bandwidth-mbps", repr(run.bandwidth_mbps)]
        for option, faults in (("--drop", run.drop), ("--stall", run.stall)):
            if faults.get(name):  # sample ids as the feeder numbers them: after the warm-up
                cmd += [option, ",".join(str(i + run.warmup) for i in sorted(faults[name]))]
        out.append(_Device(name, cmd, log_dir / f"{m:02d}_{name}.log"))
    return out


def _ping(ctx: zmq.Context, address: str, name: str, token: str, deadline: float,
          failed: Callable[[], str | None] = lambda: None, log_path: Path | None = None) -> None:
    """Ping the device at ``address`` until it acknowledges as ``name`` with this bundle's manifest hash.

    Raises:
        JmsnasError: the device exited (``failed`` returns its log's tail), serves another bundle or
            device, or did not answer before ``deadline`` (``time.monotonic``).
    """
    ping = Sender(ctx, address, timeout_ms=500, attempts=1)
    try:
        while True:
            if (tail := failed()) is not None:
                raise JmsnasError(f"device {name!r} exited while starting:\n{tail}", file=log_path)
            ok, _ = ping.send(pack({"kind": "ping", "sample": 0}), 0)
            if ok:
                served = (ping.last_ack.answer or {}) if ping.last_ack is not None else {}
                if served.get("manifest") != token or served.get("device") != name:
                    raise JmsnasError(f"{address} answers as {served.get('device')!r} with manifest "
                                      f"{str(served.get('manifest'))[:12]}..., not {name!r} of this bundle")
                return
            if time.monotonic() > deadline:
                raise JmsnasError(f"device {name!r} did not answer at {address} in time", file=log_path)
            ping.reconnect()
    finally:
        ping.close()


def _wait_ready(ctx: zmq.Context, devices: list[_Device], ports: list[int], token: str, timeout_s: float) -> None:
    """Ping every started device until it acknowledges with this bundle's manifest hash (``_ping``)."""
    deadline = time.monotonic() + timeout_s
    for dev, port in zip(devices, ports, strict=True):
        _ping(ctx, f"127.0.0.1:{port}", dev.name, token, deadline, dev.failed, dev.log_path)


class _Feeder:
    """Feeds samples to the first device and collects answers; counts re-feeds and duplicates."""

    def __init__(self, ctx: zmq.Context, first: str, reply_to: str, token: str, run: LocalRun,
                 bind: str | None = None) -> None:
        self.run, self.token, self.id, self.reply_to = run, token, uuid.uuid4().hex[:12], reply_to
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(endpoint(bind or reply_to, what="--reply"))
        self.sender = Sender(ctx, first, run.timeout_ms, run.attempts)
        self.fed_at: dict[int, float] = {}
        self.last_fed: dict[int, float] = {}
        self.attempt: dict[int, int] = {}
        self.answers: dict[int, Answer] = {}
        self.duplicates = 0
        self.refed = 0
        self.duplicated: dict[int, int] = {}  # sample -> second answers dropped

    def feed(self, i: int, x: np.ndarray) -> None:
        attempt = self.attempt.get(i, -1) + 1
        self.attempt[i] = attempt
        now = time.monotonic()
        self.fed_at.setdefault(i, now)
        self.last_fed[i] = now
        frames = pack({"kind": "sample", "run": self.id, "sample": i, "attempt": attempt, "manifest": self.token,
                       "reply_to": self.reply_to}, [("input", x)])
        ok, reason = self.sender.send(frames, i)
        if not ok:
            log.warning("sample %d: first device: %s (fed again after the deadline)", i, reason)

    def collect(self, timeout_ms: int) -> None:
        if not self.pull.poll(timeout_ms, zmq.POLLIN):
            return
        got = time.monotonic()
        try:
            msg = unpack(self.pull.recv_multipart())
        except WireError as e:
            log.warning("refused a malformed answer: %s", e)
            return
        h = msg.header
        if h.kind != "answer" or h.run != self.id or h.sample not in self.fed_at:
            return
        if h.sample in self.answers:
            self.duplicates += 1
            self.duplicated[h.sample] = self.duplicated.get(h.sample, 0) + 1
            return
        logits = msg.named().get("logits")
        first = h.hops[0]["recv_at"] if h.hops else got  # one clock: every process is on this machine
        self.answers[h.sample] = Answer(h.sample, 1e3 * (got - self.fed_at[h.sample]), dict(h.answer or {}),
                                        list(h.hops), 1e3 * (first - self.last_fed[h.sample]),
                                        1e3 * (got - h.hops[-1].get("answered_at", got)),
                                        None if logits is None else logits.copy())

    def overdue(self) -> list[int]:
        now = time.monotonic()
        return [i for i, t in self.last_fed.items() if i not in self.answers
                and now - t > self.run.sample_deadline_s and self.attempt[i] < self.run.refeeds]

    def close(self) -> None:
        self.sender.close()
        self.pull.close(linger=0)


def serve_local(bundle_dir: str | Path, inputs: Sequence[np.ndarray], run: LocalRun | None = None,
                out: str | Path | None = None) -> dict[str, Any]:
    """Serve a bundle with one process per device on this machine and feed it ``inputs`` (one sample each).

    Args:
        bundle_dir: the bundle (its hashes are checked by every device).
        inputs: one network input per sample, without the batch axis.
        run: how to run (``LocalRun``).
        out: where to write ``runtime.json`` (None: not written).

    Returns:
        The ``runtime.json`` data (``report.runtime_report``), each answer's logits under ``"_logits"``
        and the process ids it started (all ended) under ``"_pids"``.
    """
    run = run or LocalRun()
    bundle = Path(bundle_dir)
    spec = read_manifest(bundle)
    devices = [p.device for p in spec.parts]
    PartGraph.of(spec.parts, bundle / MANIFEST)  # sources that cannot be served are refused here
    links = list(run.links) if run.links is not None else plan_links(spec.plan)
    token = manifest_hash(bundle)
    log_dir = run.log_dir or (Path(out).parent if out is not None else Path.cwd()) / "runtime_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(devices) + 1)
    procs = _commands(bundle, spec, ports, run, links, log_dir)
    ctx = zmq.Context()
    feeder = None
    try:
        for p in procs:
            p.start()
        _wait_ready(ctx, procs, ports[:-1], token, run.startup_timeout_s)
        feeder = _Feeder(ctx, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[-1]}", token, run)
        port_of = {p.name: port for p, port in zip(procs, ports, strict=False)}
        warm = [inputs[i % len(inputs)] for i in range(run.warmup)]
        wall = _feed_all(feeder, procs, [*warm, *inputs], run,
                         lambda d: _wait_ready(ctx, [d], [port_of[d.name]], token, run.startup_timeout_s))
    finally:
        if feeder is not None:
            feeder.close()
        for p in procs:
            p.stop()
        ctx.destroy(linger=0)
    report = _finish(bundle, spec, token, run, links, feeder, len(inputs), wall, procs, out)
    return {**report, "_pids": [pid for p in procs for pid in p.pids]}


def feed_chain(bundle_dir: str | Path, first: str, reply: str, inputs: Sequence[np.ndarray],
               run: LocalRun | None = None, out: str | Path | None = None, bind: str | None = None) -> dict[str, Any]:
    """Feed devices already serving (one per machine) and collect their answers, as ``serve_local`` does.

    Args:
        bundle_dir: this machine's copy of the bundle (its manifest hash must be the devices').
        first: the first device's ``HOST:PORT``.
        reply: the ``HOST:PORT`` the devices send answers to (this machine, reachable from them).
        inputs: one network input per sample, without the batch axis.
        run: timeouts, rate, warm-up (``kill`` does not apply: the processes are not ours).
        out: where to write ``runtime.json``.
        bind: the address to listen on for answers, if not ``reply`` (e.g. ``0.0.0.0:PORT``).
    """
    run = run or LocalRun()
    bundle = Path(bundle_dir)
    spec = read_manifest(bundle)
    PartGraph.of(spec.parts, bundle / MANIFEST)
    links = list(run.links) if run.links is not None else plan_links(spec.plan)
    token = manifest_hash(bundle)
    ctx = zmq.Context()
    feeder = None
    try:
        _ping(ctx, first, spec.parts[0].device, token, time.monotonic() + run.startup_timeout_s)
        feeder = _Feeder(ctx, first, reply, token, run, bind)
        warm = [inputs[i % len(inputs)] for i in range(run.warmup)]
        wall = _feed_all(feeder, [], [*warm, *inputs], run, lambda d: None)
    finally:
        if feeder is not None:
            feeder.close()
        ctx.destroy(linger=0)
    return _finish(bundle, spec, token, run, links, feeder, len(inputs), wall, [], out)


def _finish(bundle: Path, spec: Any, token: str, run: LocalRun, links: Sequence[LinkSpec], feeder: _Feeder,
            samples: int, wall: float, procs: list[_Device], out: str | Path | None) -> dict[str, Any]:
    """The report of a feed (warm-up left out), written to ``out``; logits under ``"_logits"``."""
    answers = {i - run.warmup: replace(a, sample=i - run.warmup) for i, a in feeder.answers.items()
               if i >= run.warmup}
    report = runtime_report(str(bundle), spec, token, run, links, answers, samples, wall,
                            {"duplicates": feeder.duplicates, "refed": feeder.refed,
                             "duplicated": {i - run.warmup: n for i, n in feeder.duplicated.items()},
                             "refeeds": {i - run.warmup: n for i, n in feeder.attempt.items()},
                             "restarts": {p.name: p.starts - 1 for p in procs}})
    if out is not None:
        write_json(out, report, newline=True)
    return {**report, "_logits": {i: a.logits for i, a in answers.items()}}


def _feed_all(feeder: _Feeder, procs: list[_Device], inputs: Sequence[np.ndarray], run: LocalRun,
              ready: Callable[[_Device], None]) -> float:
    """Feed every sample (closed or open loop), apply the faults, collect until all are answered or time runs out.

    Returns the seconds from the first measured sample's feed (after the warm-up) to the end.
    """
    by_name = {p.name: p for p in procs}
    restarts: list[tuple[float, _Device]] = []
    rejoining: list[threading.Thread] = []  # answers keep being collected (and timed) while a device restarts
    start = time.monotonic()
    end = start + run.run_timeout_s
    nxt = 0
    while len(feeder.answers) < len(inputs) and time.monotonic() < end:
        now = time.monotonic()
        closed = run.rate is None or nxt < run.warmup  # the warm-up goes one at a time
        rejoining = [t for t in rejoining if t.is_alive()]
        due = not rejoining and nxt < len(inputs) and (len(feeder.answers) == nxt if closed
                                                       else now >= start + (nxt - run.warmup) / run.rate)
        if due:
            if nxt == run.warmup:
                start = now  # throughput and open-loop pacing count from the first measured sample
            for k in run.kill:
                if k.before_sample + run.warmup == nxt:
                    by_name[k.device].kill()
                    log.warning("killed %s before sample %d", k.device, nxt)
                    if k.restart_after_s is not None:
                        restarts.append((time.monotonic() + k.restart_after_s, by_name[k.device]))
            feeder.feed(nxt, np.asarray(inputs[nxt])[None])
            nxt += 1
        for i in feeder.overdue():
            feeder.refed += 1
            feeder.feed(i, np.asarray(inputs[i])[None])
        for when, dev in [r for r in restarts if r[0] <= now]:
            restarts.remove((when, dev))
            dev.start()
            rejoining.append(threading.Thread(target=ready, args=(dev,), daemon=True))
            rejoining[-1].start()
        feeder.collect(1 if due else 20)
    return time.monotonic() - start
