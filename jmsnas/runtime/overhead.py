"""The runtime's own cost, measured on this machine, so that a served bundle's prediction includes it.

A plan prices compute and links (eq. (1)); serving a sample also costs what the plan does not
know: framing and checking each message, thread and process hand-offs, ZeroMQ's loopback trip,
the acknowledgement, an ONNX Runtime call even for a part with no layers, and the feeder's own
trip in and out. ``measure_overhead`` times that on *pass-through chains* built here (not on the
bundle being predicted): a tiny 1-D network whose layers all run on the last device, which is
emulated at a fixed predicted time, so the plan of each chain predicts its compute and links
exactly and everything measured beyond the plan is the runtime's. Chains of 2, 3 and 4 devices,
with instant links (unlimited bandwidth) and with timed links (the token bucket sleeps), are
served closed loop and the per-sample excess over the plan is fitted by least squares::

    excess_ms = base_ms + device_ms * (devices the sample passed) + timed_link_ms * (timed links it crossed)

``RuntimeOverhead.predict`` applies the fit to a bundle's samples (``report.runtime_report`` adds
it to each sample's plan prediction: ``predicted_with_overhead_ms``). The file it is saved to
(``runtime_overhead.json``) holds the machine it was measured on; like a latency profile it holds
only there.
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from jmsnas.errors import ArtifactError
from jmsnas.io import write_json
from jmsnas.runtime.links import LinkSpec

#: A link whose price for a sample is at least this is "timed": its sender sleeps in the token bucket.
TIMED_LINK_MS = 0.05
#: The chains measured: (devices, timed links).
CHAINS = ((2, False), (3, False), (4, False), (2, True), (3, True), (4, True))
#: Predicted compute of the last (emulated) device of a calibration chain, and a timed link's round trip.
LAST_DEVICE_MS, TIMED_RTT_MS = 1.0, 4.0


@dataclass(frozen=True)
class RuntimeOverhead:
    """Fitted per-sample runtime cost in ms: ``base_ms + device_ms * devices + timed_link_ms * timed links``."""

    base_ms: float
    device_ms: float
    timed_link_ms: float
    residual_ms: float = 0.0  # the fit's root-mean-square error over the calibration samples' means
    machine: dict[str, Any] = field(default_factory=dict)
    chains: list[dict[str, Any]] = field(default_factory=list)

    def predict(self, devices: int, timed_links: int) -> float:
        """The runtime's cost for a sample that passed ``devices`` devices and ``timed_links`` timed links."""
        return self.base_ms + self.device_ms * devices + self.timed_link_ms * timed_links

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_dict(), newline=True)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RuntimeOverhead:
        """Read a saved fit.

        Raises:
            ArtifactError: not a readable JSON file with ``base_ms``, ``device_ms`` and ``timed_link_ms``.
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text())
            return cls(float(data["base_ms"]), float(data["device_ms"]), float(data["timed_link_ms"]),
                       float(data.get("residual_ms", 0.0)), dict(data.get("machine", {})),
                       list(data.get("chains", [])))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"not a runtime overhead file ({e}); make one with `jmsnas serve "
                                "--calibrate-overhead --out FILE`", file=p) from None


def fit_overhead(rows: Sequence[tuple[int, int, float]]) -> tuple[float, float, float, float]:
    """Least squares of ``excess = base + device * n + timed * t`` over ``(n, t, excess)``; also the RMS error.

    Raises:
        ValueError: fewer than three rows, or rows that do not vary both ``n`` and ``t``.
    """
    a = np.array([[1.0, n, t] for n, t, _ in rows])
    y = np.array([e for _, _, e in rows])
    if len(rows) < 3 or np.linalg.matrix_rank(a) < 3:
        raise ValueError("the fit needs chains of at least two lengths, with and without timed links")
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    rms = float(np.sqrt(np.mean((a @ coef - y) ** 2)))
    return float(coef[0]), float(coef[1]), float(coef[2]), rms


def timed_links_passed(links: Sequence[LinkSpec], payload_bytes: Sequence[float], answered_at: int) -> int:
    """How many of the links before part ``answered_at`` are timed (``TIMED_LINK_MS``) for their payloads."""
    return sum(link.latency_ms(b) >= TIMED_LINK_MS for link, b in zip(links[:answered_at], payload_bytes, strict=False))


def calibration_bundle(out: Path, devices: int, timed: bool) -> tuple[Path, tuple[LinkSpec, ...], frozenset[str]]:
    """A pass-through chain of ``devices`` devices (all layers on the last); its links and its emulated devices.

    Every device is emulated, the last at ``LAST_DEVICE_MS``, the others at 0 ms (they only relay), so
    the plan predicts the chain's compute exactly; a timed link has a ``TIMED_RTT_MS`` round trip.
    """
    import torch  # noqa: PLC0415  (heavy; only when calibrating)

    from jmsnas.export.split import split_archnet  # noqa: PLC0415
    from jmsnas.export.writer import export_bundle  # noqa: PLC0415
    from jmsnas.plan.planners import plan_sequential  # noqa: PLC0415
    from jmsnas.space.arch import ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model  # noqa: PLC0415
    from jmsnas.space.macs import arch_descriptors  # noqa: PLC0415
    from jmsnas.topology import Device, Link, build_topology  # noqa: PLC0415

    torch.manual_seed(0)
    spec = ArchSpec(dims=1, input_shape=(1, 40), num_classes=10, stem=StemSpec(channels=8, kernel_size=5, stride=1),
                    blocks=(BlockSpec.of("mb_k3_e3", 8, 12, 2),), head=HeadSpec(channels=16))
    model = build_model(spec).eval()
    n_layers = len(arch_descriptors(spec))
    names = [f"c{i}" for i in range(devices)]
    bandwidth, rtt = (1e4, TIMED_RTT_MS) if timed else (1e6, 0.0)
    topo = build_topology("chain", [Device(n) for n in names],
                          [Link(a, b, bandwidth, rtt) for a, b in zip(names, names[1:], strict=False)])
    table = {n: [1e3] * n_layers for n in names[:-1]}
    table[names[-1]] = [LAST_DEVICE_MS / n_layers] * n_layers
    plan = plan_sequential(table, [4.0 * d.output_numel for d in arch_descriptors(spec)], 4.0 * 40, topo)
    export_bundle(split_archnet(model, plan.boundaries()), plan, torch.randn(2, 1, 40), out)
    links = tuple(LinkSpec(0.0 if not timed else bandwidth, rtt) for _ in names[1:])
    return out, links, frozenset(names)


def measure_overhead(samples: int = 60, warmup: int = 10, chains: Sequence[tuple[int, bool]] = CHAINS,
                     work_dir: str | Path | None = None, progress: Callable[[str], None] = lambda _: None,
                     repeats: int = 3) -> RuntimeOverhead:
    """Serve each calibration chain closed loop on this machine and fit the runtime's cost (module docstring).

    Each chain is served ``repeats`` times, in rounds over all chains (so a slow spell of the machine
    does not land on one chain only), and its row is the median of its runs' mean excess: on a 2-core VM
    one run's mean moves by up to 1 ms from the next. Run it on a quiet machine, as any timing.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    from jmsnas.latency.profiler import measurement_conditions  # noqa: PLC0415
    from jmsnas.runtime.local import LocalRun, serve_local  # noqa: PLC0415

    runs: dict[tuple[int, bool], list[tuple[float, float, dict[str, Any], int]]] = {c: [] for c in chains}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((1, 40)).astype(np.float32) for _ in range(samples)]
        built = {(d, t): calibration_bundle(Path(tmp) / f"chain{d}{'t' if t else ''}", d, t) for d, t in chains}
        for r in range(repeats):
            for (devices, timed), (bundle, links, emulated) in built.items():
                report = serve_local(bundle, inputs, LocalRun(links=links, emulated=emulated, warmup=warmup,
                                                              log_dir=Path(tmp) / "logs"))
                excess = [s["latency_ms"] - s["predicted_ms"] for s in report["per_sample"]
                          if s["predicted_ms"] is not None]
                if report["lost"] or not excess:
                    raise ArtifactError(f"calibration chain of {devices} devices lost {report['lost']} samples; "
                                        f"see its logs in {Path(tmp) / 'logs'}")
                runs[(devices, timed)].append((float(np.mean(excess)), float(np.median(excess)), report, len(excess)))
                progress(f"round {r + 1}/{repeats}: chain of {devices} devices, {'timed' if timed else 'instant'} "
                         f"links: {np.mean(excess):.3f} ms beyond the plan")
    rows, measured = [], []
    for (devices, timed), got in runs.items():
        t = devices - 1 if timed else 0
        means = [g[0] for g in got]
        mid = sorted(got, key=lambda g: g[0])[len(got) // 2]  # the median run (by its mean)
        rows.append((devices, t, float(np.median(means))))
        measured.append({"devices": devices, "timed_links": t, "samples": mid[3], "runs": len(got),
                         "excess_mean_ms": float(np.median(means)), "excess_mean_ms_per_run": means,
                         "excess_p50_ms": mid[1], "measured_mean_ms": mid[2]["end_to_end"]["measured_mean_ms"],
                         "plan_ms": mid[2]["end_to_end"]["predicted_mean_ms"]})
    base, device, timed_link, rms = fit_overhead(rows)
    machine = {**measurement_conditions(1, "cpu"), "platform": platform.platform(),
               "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    return RuntimeOverhead(base, device, timed_link, rms, machine, measured)
