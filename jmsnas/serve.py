"""``python -m jmsnas.serve``: serve an exported bundle, one process per device.

One device of a real deployment (run one per machine, each with the same bundle folder)::

    python -m jmsnas.serve BUNDLE --device NAME --listen HOST:PORT [--next HOST:PORT] [--link MBPS,RTT_MS]
        [--bandwidth-mbps MBPS]   (a bundle with adaptive thresholds: the exits' thresholds at that bandwidth)

All devices on this machine, fed samples, measured against the plan (writes ``runtime.json``)::

    python -m jmsnas.serve BUNDLE --local [--samples N --rate R] [--experiment EXPERIMENT.yaml] [--overhead FILE]

The runtime's own cost on this machine (framing, hand-offs, loopback trips; not in a plan), measured on
pass-through chains and fitted per sample, per device and per timed link (``runtime.overhead``)::

    python -m jmsnas.serve --calibrate-overhead [--samples N] [--out runtime_overhead.json]

With ``--local`` the links are emulated from the experiment's topology (bandwidth, round trip),
and the devices it describes analytically are **emulated** (they run on this CPU, then wait until
their predicted time). The experiment is the one beside the run the bundle came from
(``runs/NAME/experiment.yaml`` above ``runs/NAME/best/tXms/bundle``) unless ``--experiment``
names one; without one the links are derived from the plan's ``link_ms`` and only the devices
named by ``--emulate`` are emulated.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.runtime.links import LinkSpec, plan_links
from jmsnas.runtime.local import LocalRun, serve_local
from jmsnas.runtime.serve import DeviceServer, ServeOptions
from jmsnas.runtime.transport import endpoint


def _link(text: str) -> LinkSpec:
    try:
        return LinkSpec.parse(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.message) from None  # argparse prints it and exits with status 2


def _ids(text: str) -> frozenset[int]:
    try:
        return frozenset(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of sample ids") from None


EXAMPLES = """examples:
  jmsnas serve runs/quickstart/best/t18ms/bundle --local --samples 200        every device here, measured
  jmsnas serve BUNDLE --device phone --listen 0.0.0.0:5601                    the last device, on its machine
  jmsnas serve BUNDLE --device m4f --listen 0.0.0.0:5600 --next phone-host:5601 --link 0.1,15
  jmsnas serve BUNDLE --feed m0plus-host:5599 --reply this-host:5700 --samples 100
  jmsnas serve --calibrate-overhead --out runtime_overhead.json               the runtime's own cost here
  jmsnas serve runs/quickstart/best/t18ms/bundle --local --overhead runtime_overhead.json

exit status: 0 served (or stopped by a signal), 2 bad input (one 'error:' line names the option or file)"""


def _parser(prog: str = "python -m jmsnas.serve") -> argparse.ArgumentParser:
    from jmsnas.cli import add_verbosity

    p = argparse.ArgumentParser(prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Serve a bundle: one device (--device, --listen, --next) or every "
                                "device on this machine (--local).")
    add_verbosity(p)
    p.add_argument("bundle", nargs="?", default=None,
                   help="bundle folder (manifest.json and one .pt/.onnx pair per device)")
    p.add_argument("--backend", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--timeout-ms", type=int, default=1000, help="wait for the next hop's acknowledgement")
    p.add_argument("--attempts", type=int, default=3, help="sends per sample before answering alone")
    p.add_argument("--bandwidth-mbps", type=float, default=None, help="the adaptive cut's current bandwidth: use the "
                   "bundle's adaptive thresholds (exits.adaptive) there; with --local its link is emulated at it")
    one = p.add_argument_group("one device")
    one.add_argument("--device", help="the device (a name in manifest.json's devices)")
    one.add_argument("--listen", help="HOST:PORT to receive samples on")
    one.add_argument("--next", nargs="+", default=None, help="HOST:PORT of the next device (none on the last; the "
                     "root of parallel branches: one per branch, in the manifest's part order)")
    one.add_argument("--link", type=_link, nargs="+", default=None,
                     help="emulate the outgoing link: MBPS[,RTT_MS] (one per --next)")
    one.add_argument("--emulated", action="store_true", help="wait until the plan's predicted compute time")
    one.add_argument("--drop", type=_ids, default=frozenset(), help="fault: samples whose first send is lost: 3,7")
    one.add_argument("--stall", type=_ids, default=frozenset(), help="fault: samples whose first send comes late")
    one.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    loc = p.add_argument_group("every device here")
    loc.add_argument("--local", action="store_true", help="one process per device on this machine")
    loc.add_argument("--samples", type=int, default=100, help="how many samples to feed")
    loc.add_argument("--rate", type=float, default=None, help="samples per second (default: one at a time)")
    loc.add_argument("--inputs", type=Path, default=None, help=".npy of network inputs [N, ...] (default: random)")
    loc.add_argument("--experiment", type=Path, default=None, help="experiment YAML for links and analytic devices")
    loc.add_argument("--emulate", nargs="*", default=None, help="devices to emulate (overrides the experiment)")
    loc.add_argument("--out", type=Path, default=None, help="runtime.json path (default: beside the bundle)")
    loc.add_argument("--warmup", type=int, default=5, help="samples fed first and left out of the figures")
    loc.add_argument("--seed", type=int, default=0)
    loc.add_argument("--overhead", type=Path, default=None, metavar="FILE", help="the runtime's own cost on this "
                     "machine (from --calibrate-overhead), added to the plan's prediction")
    cal = p.add_argument_group("the runtime's own cost (no bundle)")
    cal.add_argument("--calibrate-overhead", action="store_true", help="serve pass-through chains of 2-4 devices "
                     "here (each three times) and fit the runtime's cost per sample, per device and per timed "
                     "link; writes --out (default runtime_overhead.json); run it on a quiet machine")
    feed = p.add_argument_group("feed devices serving elsewhere (the --samples, --rate, --inputs, --out options apply)")
    feed.add_argument("--feed", default=None, help="HOST:PORT of the first device")
    feed.add_argument("--reply", default=None, help="HOST:PORT of this machine the devices answer to")
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m jmsnas.serve") -> int:
    """Run ``jmsnas serve``; returns the exit status (0 served, 2 bad input)."""
    args = _parser(prog).parse_args(argv)
    level = logging.DEBUG if args.verbose else {0: logging.INFO, 1: logging.WARNING}.get(args.quiet, logging.ERROR)
    logging.basicConfig(level=level, format=f"%(asctime)s {args.device or 'local'} %(levelname)s %(message)s")
    try:
        if args.bandwidth_mbps is not None and not args.bandwidth_mbps > 0:
            raise ConfigError(f"--bandwidth-mbps must be > 0, got {args.bandwidth_mbps}", field="--bandwidth-mbps")
        if args.timeout_ms < 1 or args.attempts < 1:
            raise ConfigError(f"--timeout-ms and --attempts must be >= 1, got {args.timeout_ms} and {args.attempts}",
                              field="--timeout-ms")
        if args.calibrate_overhead:
            return _calibrate(args)
        if args.bundle is None:
            raise ConfigError("give a BUNDLE folder (or --calibrate-overhead)", field="bundle")
        if args.feed:
            return _feed(args)
        if args.local:
            if args.device or args.listen or args.next:
                raise ConfigError("--local starts every device itself: drop --device, --listen and --next",
                                  field="--local")
            return _local(args)
        if not (args.device and args.listen):
            raise ConfigError("give --device NAME --listen HOST:PORT (one device) or --local (all here)",
                              field="--device")
        return _one(args)
    except JmsnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _one(args: argparse.Namespace) -> int:
    endpoint(args.listen)
    for address in args.next or ():
        endpoint(address, what="--next")
    links = tuple(args.link or ())
    if links and len(links) not in (1, len(args.next or ())):
        raise ConfigError(f"{len(links)} --link values for {len(args.next or ())} --next hops; give one per hop",
                          field="--link")
    options = ServeOptions(args.backend, args.emulated, links[0] if links else None, args.timeout_ms, args.attempts,
                           args.drop, args.stall, stall_ms=int(1.5 * args.timeout_ms),  # after the first resend
                           links=links, bandwidth_mbps=args.bandwidth_mbps)
    server = DeviceServer(args.bundle, args.device, args.listen, args.next, options)
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    if args.parent is not None:
        threading.Thread(target=_watch_parent, args=(args.parent, server.stop), daemon=True).start()
    try:
        server.serve()
    except KeyboardInterrupt:
        server.stop.set()
    return 0


def _watch_parent(pid: int, stop: threading.Event) -> None:
    """Stop when the launcher that started this process is gone (its children are re-parented)."""
    while not stop.wait(0.5):
        if os.getppid() != pid:
            stop.set()


def _topology(args: argparse.Namespace) -> tuple[dict[tuple[str, str], LinkSpec] | None, frozenset[str]]:
    path = args.experiment
    if path is None:
        found = [d / "experiment.yaml" for d in Path(args.bundle).resolve().parents[:4]]
        path = next((f for f in found if f.is_file()), None)
    if path is None:
        return None, frozenset(args.emulate or ())
    from jmsnas.config import load_experiment  # noqa: PLC0415  (only with an experiment)

    topo = load_experiment(path, check_data=False).topology
    links = {(ln.src, ln.dst): LinkSpec(ln.bandwidth_mbps, ln.rtt_ms) for ln in topo.links}
    analytic = frozenset(d.name for d in topo.devices if d.analytic is not None)
    print(f"topology    {path}: links {len(links)}, analytic (emulated) {sorted(analytic) or 'none'}")
    return links, frozenset(args.emulate) if args.emulate is not None else analytic


def _inputs(args: argparse.Namespace, shape: Sequence[int]) -> list[np.ndarray]:
    if args.inputs is not None:
        try:
            data = np.load(args.inputs, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read a .npy array ({e})", file=args.inputs, field="--inputs") from None
        if tuple(data.shape[1:]) != tuple(shape):
            raise ConfigError(f"inputs of shape {list(data.shape)}; the bundle takes [N, {', '.join(map(str, shape))}]",
                              file=args.inputs, field="--inputs")
        return [data[i].astype(np.float32) for i in range(min(len(data), args.samples))]
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}", field="--samples")
    rng = np.random.default_rng(args.seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(args.samples)]


def _calibrate(args: argparse.Namespace) -> int:
    from jmsnas.runtime.overhead import measure_overhead  # noqa: PLC0415

    if args.samples < 10:
        raise ConfigError(f"--samples must be >= 10 for a calibration, got {args.samples}", field="--samples")
    out = args.out or Path("runtime_overhead.json")
    fit = measure_overhead(args.samples, max(0, args.warmup), progress=lambda line: print(f"calibrate   {line}"))
    print(f"overhead    {fit.base_ms:.3f} ms per sample + {fit.device_ms:.3f} ms per device + "
          f"{fit.timed_link_ms:.3f} ms per timed link (fit RMS {fit.residual_ms:.3f} ms)")
    print(f"written     {fit.save(out)}")
    return 0


def _overhead(args: argparse.Namespace):  # noqa: ANN202
    from jmsnas.runtime.overhead import RuntimeOverhead  # noqa: PLC0415

    return None if args.overhead is None else RuntimeOverhead.load(args.overhead)


def _local(args: argparse.Namespace) -> int:
    from jmsnas.runtime.bundle import read_manifest  # noqa: PLC0415

    if args.rate is not None and not args.rate > 0:
        raise ConfigError(f"--rate must be > 0 samples/s, got {args.rate}", field="--rate")
    spec = read_manifest(args.bundle)
    if args.bandwidth_mbps is not None and spec.adaptive is None:
        raise ConfigError("this bundle has no adaptive thresholds (exits.adaptive in the experiment it was deployed "
                          "from); drop --bandwidth-mbps", field="--bandwidth-mbps")
    links, emulated = _topology(args)
    cut_links = list(plan_links(spec.plan, links))
    if args.bandwidth_mbps is not None and spec.adaptive is not None:  # the adaptive cut runs at the told bandwidth
        told = cut_links[spec.adaptive.cut]
        cut_links[spec.adaptive.cut] = LinkSpec(args.bandwidth_mbps, told.rtt_ms, told.burst_bytes, "cli")
    run = LocalRun(backend=args.backend, rate=args.rate, links=tuple(cut_links), emulated=emulated,
                   timeout_ms=args.timeout_ms, attempts=args.attempts, warmup=max(0, args.warmup),
                   overhead=_overhead(args), bandwidth_mbps=args.bandwidth_mbps)
    out = args.out or Path(args.bundle).resolve().parent / "runtime.json"
    report = serve_local(args.bundle, _inputs(args, spec.parts[0].inputs[0].example_shape[1:]), run, out)
    _print(report)
    print(f"written     {out}")
    return 0


def _feed(args: argparse.Namespace) -> int:
    from jmsnas.runtime.bundle import read_manifest  # noqa: PLC0415
    from jmsnas.runtime.local import feed_chain  # noqa: PLC0415

    if not args.reply:
        raise ConfigError("--feed needs --reply HOST:PORT (this machine, where the devices send answers)",
                          field="--reply")
    endpoint(args.feed, what="--feed")
    endpoint(args.reply, what="--reply")
    spec = read_manifest(args.bundle)
    run = LocalRun(backend=args.backend, rate=args.rate, emulated=frozenset(args.emulate or ()),
                   timeout_ms=args.timeout_ms, attempts=args.attempts, warmup=max(0, args.warmup),
                   overhead=_overhead(args), bandwidth_mbps=args.bandwidth_mbps)
    out = args.out or Path(args.bundle).resolve().parent / "runtime.json"
    port = args.reply.rpartition(":")[2]
    report = feed_chain(args.bundle, args.feed, args.reply, _inputs(args, spec.parts[0].inputs[0].example_shape[1:]),
                        run, out, bind=f"*:{port}")
    _print(report)
    print(f"written     {out}")
    return 0


def _print(r: dict) -> None:
    e = r["end_to_end"]
    print(f"samples     {r['samples']}: answered {r['answered']}, lost {r['lost']}, fell back {r['fell_back']}, "
          f"failed {r['failed']}; answered at {r['answered_at']}")
    if e["measured_mean_ms"] is not None:
        print(f"end to end  mean {e['measured_mean_ms']:.3f} ms, p50 {e['measured_p50_ms']:.3f}, p95 "
              f"{e['measured_p95_ms']:.3f}, p99 {e['measured_p99_ms']:.3f}; predicted mean "
              f"{e['predicted_mean_ms']:.3f} ms; {e['throughput_sps']:.1f} samples/s")
    if e.get("predicted_with_overhead_mean_ms") is not None:
        print(f"  with the runtime's own cost: predicted {e['predicted_with_overhead_mean_ms']:.3f} ms, measured/"
              f"predicted {e['measured_over_predicted_with_overhead']:.3f} (plan alone "
              f"{e['measured_over_predicted']:.3f})")
    for d in r["devices"]:
        measured = "-" if d["measured_mean_ms"] is None else f"{d['measured_mean_ms']:.3f}"
        print(f"  device    {d['device']:<10} {d['label']:<20} predicted {d['predicted_ms']:.3f} ms, "
              f"measured {measured} ms")
    for ln in r["links"]:
        measured = "-" if ln["measured_wire_mean_ms"] is None else f"{ln['measured_wire_mean_ms']:.3f}"
        print(f"  link      {ln['src']} -> {ln['dst']} ({ln['source']}) plan {ln['plan_link_ms']:.3f} ms, "
              f"measured {measured} ms")


if __name__ == "__main__":
    sys.exit(main())
