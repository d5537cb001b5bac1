"""The deployment's plots in ``report.md``, drawn from the deploy records (``deploy.json``) and ``plan.json``.

- ``deploy_breakdown.png``: per chosen network, the deployed plan's compute per device and transfer per link
  against the four baselines (device-only, cloud-only, Neurosurgeon, HiveMind), stacked in execution order.
- ``exit_termination.png``: the share of test samples leaving at each exit, per chosen network.
- ``payload_accuracy.png``: bytes sent at each cut against test accuracy, per compressor
  (``stages.payload_sweep``).
- ``latency_measured.png``: measured against predicted latency of each exported part on this machine.

Each figure is drawn only when the records hold what it shows (``write_deploy_plots`` returns the ones drawn).
Every input is a ``deploy.json`` dict with the choice's ``t_const_ms`` and folder ``dir``, as
``stages.deploy.deploy_run`` collects them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from jmsnas.plan.artifact import DeploymentPlan

BREAKDOWN_PNG = "deploy_breakdown.png"
TERMINATION_PNG = "exit_termination.png"
PAYLOAD_PNG = "payload_accuracy.png"
MEASURED_PNG = "latency_measured.png"

_LINK_COLOR = "0.75"


def _figure(n_panels: int, width: float, height: float):
    from matplotlib.figure import Figure  # imported when a plot is drawn: `jmsnas search --check` needs none

    fig = Figure(figsize=(width, height * n_panels), layout="constrained")
    return fig, fig.subplots(n_panels, 1, squeeze=False)[:, 0]


def _plain_log_ticks(*axes) -> None:
    """Tick labels such as 0.2 and 40 on log axes instead of 2x10^-1 and 4x10^1."""
    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _: int) -> str:  # only 2x and 5x of each decade: the others crowd the axis
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return f"{v:g}" if mantissa in (2.0, 5.0) else ""

    for axis in axes:
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(minor))


def stacks(plan: DeploymentPlan) -> list[tuple[str, float]]:
    """``(label, ms)`` in execution order: each device's compute, then the link it sends over."""
    out: list[tuple[str, float]] = []
    for m, seg in enumerate(plan.segments):
        out.append((seg.device, float(seg.compute_ms)))
        if m < len(plan.cuts):
            out.append((f"{plan.cuts[m].src}->{plan.cuts[m].dst}", float(plan.cuts[m].link_ms)))
    return out


def baseline_stacks(b: dict) -> list[tuple[str, float]]:
    """A baseline's stacks in path order; one ``total`` bar for a record written before breakdowns existed."""
    if not b.get("device_ms"):
        return [("total", float(b["latency_ms"]))]
    path, out = b["path"], []
    for m, device in enumerate(path):
        out.append((device, float(b["device_ms"].get(device, 0.0))))
        if m + 1 < len(path):
            link = f"{device}->{path[m + 1]}"
            out.append((link, float(b["link_ms"].get(link, 0.0))))
    return out


def _sequential(plan: DeploymentPlan) -> bool:
    return all(s.part == "main" for s in plan.segments)


def plot_deploy_breakdown(path: Path, done: Sequence[dict], run_dir: Path) -> bool:
    """Stacked latency bars, deployed plan vs baselines, one panel per sequential chosen network."""
    rows = []
    for d in done:
        plan = DeploymentPlan.load(run_dir / d["dir"] / d["plan"])
        if _sequential(plan):
            bars = [("jmsnas (deployed)", stacks(plan))]
            bars += [(f"{b['name']} ({b['network']})", baseline_stacks(b)) for b in d["baselines"]]
            rows.append((d, bars))
    if not rows:
        return False
    devices = list(dict.fromkeys(lab for _, bars in rows for _, st in bars for lab, _ in st if "->" not in lab))
    colors = {dev: f"C{i % 10}" for i, dev in enumerate(d for d in devices if d != "total")} | {"total": "0.4"}
    fig, axes = _figure(len(rows), 7.5, 0.55 * max(len(b) for _, b in rows) + 1.0)
    for ax, (d, bars) in zip(axes, rows, strict=True):
        for y, (_, st) in enumerate(bars):
            left = 0.0
            for lab, ms in st:
                link = "->" in lab
                ax.barh(y, ms, left=left, color=_LINK_COLOR if link else colors[lab], hatch="//" if link else None,
                        edgecolor="white", label=("link transfer" if link else lab))
                left += ms
            ax.annotate(f" {left:.3g} ms", (left, y), va="center", fontsize=8)
        ax.axvline(d["t_const_ms"], color="k", ls="--", lw=1)
        ax.set_xlim(0, 1.15 * max(d["t_const_ms"], *(sum(ms for _, ms in st) for _, st in bars)))
        ax.set_yticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("predicted latency (ms; worst case with exits)")
        arch = d["arch"] if len(d["arch"]) <= 70 else d["arch"][:67] + "..."
        ax.set_title(f"T_const {d['t_const_ms']:g} ms (dashed): {arch}", fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=120)
    return True


def plot_exit_termination(path: Path, done: Sequence[dict]) -> bool:
    """Share of test samples leaving at each exit (and at the end of the network), per chosen network."""
    rows = [d for d in done if d.get("exits") and d["exits"]["units"]]
    if not rows:
        return False
    fig, axes = _figure(len(rows), 6.0, 2.8)
    for ax, d in zip(axes, rows, strict=True):
        e = d["exits"]
        labels = [f"exit after unit {u}\non {dev} (t={t:.2f})" for u, dev, t in
                  zip(e["units"], e["devices"], e["thresholds"], strict=True)] + [f"final\non {d['devices'][-1]}"]
        ax.bar(range(len(labels)), [100 * t for t in e["termination"]], color=["C2"] * len(e["units"]) + ["C7"])
        for i, t in enumerate(e["termination"]):
            ax.annotate(f"{100 * t:.1f} %", (i, 100 * t), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_ylabel("test samples leaving (%)")
        ax.set_title(f"T_const {d['t_const_ms']:g} ms: test acc {100 * e['test_acc']:.2f} % "
                     f"({e['acc_change_pp']:+.2f} pp), mean latency {e['mean_latency_ms']:.3g} ms "
                     f"(worst {e['worst_latency_ms']:.3g} ms)", fontsize=8)
    fig.savefig(path, dpi=120)
    return True


def plot_payload_accuracy(path: Path, done: Sequence[dict]) -> bool:
    """Test accuracy against the bytes one sample sends at each cut, one line per cut, deployed points starred."""
    rows = [d for d in done if d.get("payload_sweep")]
    if not rows:
        return False
    fig, axes = _figure(len(rows), 6.4, 3.4)
    for ax, d in zip(axes, rows, strict=True):
        cuts = sorted({p["cut"] for p in d["payload_sweep"]})
        for k in cuts:
            pts = sorted((p for p in d["payload_sweep"] if p["cut"] == k), key=lambda p: p["payload_bytes"])
            first = pts[0]
            line = ax.plot([p["payload_bytes"] for p in pts], [100 * p["test_acc"] for p in pts],
                           "os^vD"[k % 5] + ("-" if k % 2 == 0 else "--"), color=f"C{k % 10}",
                           mfc="none" if k else None, label=f"cut {k}: {first['src']} -> {first['dst']}")[0]
            for p in pts:
                ax.annotate(p["compressor"], (p["payload_bytes"], 100 * p["test_acc"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
                if p["deployed"]:
                    ax.scatter([p["payload_bytes"]], [100 * p["test_acc"]], marker="*", s=200,
                               color=line.get_color(), edgecolor="k", zorder=4)
        ax.scatter([], [], marker="*", s=120, color="w", edgecolor="k", label="deployed")
        ax.axhline(100 * d["test_acc_unsplit"], color="k", ls=":", lw=1, label="unsplit network")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel("bytes sent per sample at the cut (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"T_const {d['t_const_ms']:g} ms: one cut's compressor swapped, the others as deployed",
                     fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return True


def measured_points(done: Sequence[dict]) -> list[tuple[str, float, float, float]]:
    """``(label, predicted_ms, onnx_ms, torchscript_ms)`` of every part measured with layers planned on it."""
    out = []
    for d in done:
        m = d.get("latency_measured")
        for p in (m or {}).get("parts", []):
            if p["status"] == "measured" and p["onnx_rel_err"] is not None:
                out.append((f"{d['t_const_ms']:g} ms: {p['device']}", float(p["predicted_ms"]), float(p["onnx_ms"]),
                            float(p["torchscript_ms"])))
    return out


def plot_latency_measured(path: Path, done: Sequence[dict], flag_above: float = 0.15) -> bool:
    """Measured (ONNX Runtime, TorchScript) against predicted latency per part, with the ±flag band."""
    pts = measured_points(done)
    if not pts:
        return False
    fig, axes = _figure(1, 5.2, 4.4)
    ax = axes[0]
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], marker="o", color="C0", label="ONNX Runtime", zorder=3)
    ax.scatter([p[1] for p in pts], [p[3] for p in pts], marker="^", color="C1", label="TorchScript", zorder=3)
    for label, pred, onnx, _ in pts:
        ax.annotate(label, (pred, onnx), fontsize=7, textcoords="offset points", xytext=(4, -8))
    values = [v for p in pts for v in p[1:]]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, label="measured = predicted")
    ax.fill_between([lo, hi], [lo * (1 - flag_above), hi * (1 - flag_above)],
                    [lo * (1 + flag_above), hi * (1 + flag_above)], color="C2", alpha=0.15,
                    label=f"within ±{100 * flag_above:.0f} % (not flagged)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax.xaxis, ax.yaxis)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted (ms, from the device's profile)")
    ax.set_ylabel("measured on this machine (ms, batch 1)")
    ax.set_title("Exported parts: measured vs predicted", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120)
    return True


def write_deploy_plots(run_dir: Path, done: Sequence[dict]) -> dict[str, str]:
    """Draw every deployment plot the records support into ``run_dir``; returns ``{kind: file name}``.

    A plot the records no longer support is removed, so no figure of an earlier deployment is left behind.
    """
    flag = next((d["latency_measured"]["flag_above"] for d in done if d.get("latency_measured")), 0.15)
    drawn = {
        "deploy_breakdown": (BREAKDOWN_PNG, plot_deploy_breakdown(run_dir / BREAKDOWN_PNG, done, run_dir)),
        "exit_termination": (TERMINATION_PNG, plot_exit_termination(run_dir / TERMINATION_PNG, done)),
        "payload_accuracy": (PAYLOAD_PNG, plot_payload_accuracy(run_dir / PAYLOAD_PNG, done)),
        "latency_measured": (MEASURED_PNG, plot_latency_measured(run_dir / MEASURED_PNG, done, flag)),
    }
    for name, ok in drawn.values():
        if not ok:
            (run_dir / name).unlink(missing_ok=True)
    return {k: name for k, (name, ok) in drawn.items() if ok}
