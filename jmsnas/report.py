"""Tables and plots of a search: the choice per T_const, the Pareto front, ``summary.json``, ``report.md``.

Everything here works on plain trial dicts, so it is tested without Ray (`jmsnas.tune` collects
the trials and calls `write_outputs`). A trial dict holds:

``trial_id``, ``overrides`` (the grid values of the trial), ``status`` (``finished``: searched,
retrained and tested; ``stopped``: ended early by the scheduler; ``error``; ``incomplete``),
``t_const_ms``, ``seed``, ``val_acc`` and ``test_acc`` (of the retrained network),
``predicted_latency_ms`` (of the derived network on its best split), ``feasible``, ``compact``
(the architecture string), ``artifact_dir`` (``arch.json``, ``model.pt``, ``outcome.json``),
``search`` (the last metrics the search reported) and ``error``.

Constraints are checked after search, not only penalised (DESIGN.md): per T_const the most
accurate finished trial (validation accuracy; test accuracy is reported, never used to choose)
whose predicted latency meets T_const is chosen. When none meets it, the constraint is reported
infeasible with the lowest latency any trial reached.

``summary.json`` is a `Summary` (its trials `TrialSummary`, its choices `Selection`); read it back
with ``Summary.load(path)``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from jmsnas.io import write_text
from jmsnas.machine import processor_name
from jmsnas.strategies.records import Artifact, Outcome, Record

PARETO_PNG = "pareto.png"
BREAKDOWN_PNG = "latency_breakdown.png"
_ARTIFACTS = ("arch.json", "model.pt", "outcome.json")


class TrialSummary(Record):
    """One trial of ``summary.json`` (the trial dict of the module docstring).

    ``search_val_acc`` (the chosen network's accuracy with its search weights) is there for finished trials only.
    """

    trial_id: str
    overrides: dict[str, Any]
    status: Literal["finished", "stopped", "error", "incomplete"]
    t_const_ms: float
    seed: int
    val_acc: float | None
    test_acc: float | None
    predicted_latency_ms: float | None
    feasible: bool | None
    compact: str | None
    artifact_dir: str
    error: str | None
    search: dict[str, int | float]
    search_val_acc: float | None = None


class Selection(Record):
    """The choice for one T_const: the chosen trial's figures when feasible, else the lowest latency reached.

    A feasible choice has ``trial_id`` ... ``best_dir``; an infeasible one ``lowest_latency_ms`` (None when no
    trial of it finished), ``lowest_latency_trial`` (when one did) and ``note``.
    """

    t_const_ms: float
    trials: int
    finished: int
    feasible: bool
    trial_id: str | None
    overrides: dict[str, Any] | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    predicted_latency_ms: float | None = None
    compact: str | None = None
    artifact_dir: str | None = None
    best_dir: str | None = None
    lowest_latency_ms: float | None = None
    lowest_latency_trial: str | None = None
    note: str | None = None


class Summary(Artifact):
    """``summary.json``: every trial, the choice per T_const, the overall choice (or None) and the plots' files."""

    experiment: str
    trials: list[TrialSummary]
    selections: list[Selection]
    overall: Selection | None
    plots: dict[str, str]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency_ms, accuracy) points no other point beats on both, by increasing latency.

    Lower latency and higher accuracy are better. Of equal points only the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def constraint_dir(t_const_ms: float) -> str:
    """The folder name of a constraint under ``best/``: ``t20ms``, ``t2.5ms``."""
    return f"t{t_const_ms:g}ms"


def _finished(trials: Sequence[dict]) -> list[dict]:
    return [t for t in trials if t["status"] == "finished"]


def _select_one(t_const_ms: float, group: list[dict]) -> dict:
    done = _finished(group)
    sel = {"t_const_ms": t_const_ms, "trials": len(group), "finished": len(done), "feasible": False,
           "trial_id": None}
    feasible = [t for t in done if t["predicted_latency_ms"] <= t_const_ms]
    if feasible:
        best = max(feasible, key=lambda t: (t["val_acc"], -t["predicted_latency_ms"]))
        sel.update(feasible=True, trial_id=best["trial_id"], overrides=best["overrides"], val_acc=best["val_acc"],
                   test_acc=best["test_acc"], predicted_latency_ms=best["predicted_latency_ms"],
                   compact=best["compact"], artifact_dir=best["artifact_dir"],
                   best_dir=f"best/{constraint_dir(t_const_ms)}")
    elif done:
        fastest = min(done, key=lambda t: t["predicted_latency_ms"])
        sel.update(lowest_latency_ms=fastest["predicted_latency_ms"], lowest_latency_trial=fastest["trial_id"],
                   note=f"infeasible: no trial met T_const = {t_const_ms:g} ms; the fastest derived network "
                        f"needs {fastest['predicted_latency_ms']:.4g} ms")
    else:
        seen = [t["search"]["derived_latency_ms"] for t in group if "derived_latency_ms" in t["search"]]
        sel.update(lowest_latency_ms=None, note="infeasible: no trial of this constraint finished" + (
            f"; the fastest derived network seen during search needed {min(seen):.4g} ms" if seen else ""))
    return sel


def select_per_constraint(trials: Sequence[dict]) -> list[dict]:
    """One selection per T_const value of the trials, by increasing T_const (see the module docstring)."""
    groups: dict[float, list[dict]] = {}
    for t in trials:
        groups.setdefault(float(t["t_const_ms"]), []).append(t)
    return [_select_one(t_const, groups[t_const]) for t_const in sorted(groups)]


def overall_choice(selections: Sequence[dict]) -> dict | None:
    """The most accurate feasible selection (ties: the faster), or None when no constraint was met."""
    feasible = [s for s in selections if s["feasible"]]
    return max(feasible, key=lambda s: (s["val_acc"], -s["predicted_latency_ms"])) if feasible else None


def copy_best(run_dir: Path, selections: Sequence[dict], overall: dict | None) -> None:
    """Copy each chosen trial's artifacts to ``best/t<T>ms/`` and the overall choice's ``arch.json`` to the top."""
    for sel in selections:
        if not sel["feasible"]:
            continue
        dest = run_dir / sel["best_dir"]
        dest.mkdir(parents=True, exist_ok=True)
        for name in _ARTIFACTS:
            shutil.copy2(Path(sel["artifact_dir"]) / name, dest / name)
    top = run_dir / "arch.json"
    if overall is not None:
        shutil.copy2(Path(overall["artifact_dir"]) / "arch.json", top)
    elif top.exists():
        top.unlink()


_BASELINE_MARKERS = {"device-only": ("s", "tab:purple"), "cloud-only": ("D", "tab:brown")}


def _plot_baselines(ax, selections: Sequence[dict], deployments: Sequence[dict]) -> list[float]:
    """Each chosen network's device-only / cloud-only placements at its accuracy; the fixed network's as lines."""
    acc = {s["t_const_ms"]: s["val_acc"] for s in selections if s["feasible"]}
    xs, lines = [], {}
    for d in deployments:
        y = acc.get(d["t_const_ms"])
        for b in d["baselines"]:
            if b["name"] in _BASELINE_MARKERS and y is not None:
                marker, color = _BASELINE_MARKERS[b["name"]]
                ax.scatter([b["latency_ms"]], [y], marker=marker, color=color, s=50, zorder=4,
                           label=f"{b['name']} (chosen network)")
                xs.append(b["latency_ms"])
            elif b["name"] not in _BASELINE_MARKERS:
                lines.setdefault(b["name"], b["latency_ms"])
        if y is not None:
            ax.scatter([d["predicted_latency_ms"]], [y], marker="P", color="tab:cyan", edgecolor="k", s=90, zorder=5,
                       label="deployed (compressed, exits: worst case)")
            xs.append(d["predicted_latency_ms"])
    for (name, ms), ls in zip(lines.items(), (":", "-."), strict=False):
        ax.axvline(ms, color="0.3", ls=ls, lw=1, label=f"{name} (MobileNetV2-style, accuracy not trained)")
        xs.append(ms)
    return xs


def plot_pareto(path: Path, trials: Sequence[dict], selections: Sequence[dict],
                deployments: Sequence[dict] = ()) -> None:
    """Validation accuracy vs predicted latency of every finished trial, the front, the T_const lines.

    With ``deployments`` (``deploy.json`` dicts with ``t_const_ms``), the baselines of each chosen
    network on the same axes: device-only and cloud-only at the chosen network's accuracy, the fixed
    network's Neurosurgeon and HiveMind latencies as vertical lines, and the deployed plan's latency.
    """
    done = _finished(trials)
    from matplotlib.figure import Figure  # imported when a plot is drawn: `jmsnas search --check` needs none

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    pts = [(t["predicted_latency_ms"], t["val_acc"]) for t in done]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="0.55", label="trials", zorder=2)
    front = [pts[i] for i in pareto_front(pts)]
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:red", label="Pareto front", zorder=3)
    chosen = [s for s in selections if s["feasible"]]
    ax.scatter([s["predicted_latency_ms"] for s in chosen], [s["val_acc"] for s in chosen], marker="*", s=220,
               color="tab:green", edgecolor="k", label="chosen per T_const", zorder=4)
    for s in selections:
        ax.axvline(s["t_const_ms"], color="tab:green" if s["feasible"] else "tab:orange", ls="--", lw=1)
        ax.annotate(f"T={s['t_const_ms']:g}" + ("" if s["feasible"] else " (infeasible)"),
                    (s["t_const_ms"], 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=8)
    xs = [p[0] for p in pts] + [s["t_const_ms"] for s in selections] + _plot_baselines(ax, selections, deployments)
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("predicted latency of the derived network (ms)")
    ax.set_ylabel("validation accuracy (retrained)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def plot_breakdown(path: Path, outcome: Outcome) -> None:
    """Per-device compute and per-link transfer latency of one network, in chain order (branches side by side).

    A device or link of the path missing from ``split.device_ms`` / ``split.link_ms`` shows as 0 ms.
    """
    split = outcome.split
    labels, values, colors = [], [], []
    bounds = split.boundaries
    branched = outcome.arch.get("kind") == "branched"  # path: pre path, branch devices, post path
    for m, device in enumerate(split.path):
        labels.append(f"{device}\n{bounds[m + 1] - bounds[m]} layers" if m + 1 < len(bounds) else device)
        values.append(split.device_ms.get(device, 0.0))
        colors.append("tab:blue")
        if branched:  # every link leaving this device (the root has one per branch)
            links = [k for k in split.link_ms if k.split("->")[0] == device]
        else:
            links = [f"{device}->{split.path[m + 1]}"] if m + 1 < len(split.path) else []
        for link in links:
            labels.append(link.replace("->", "\n→ "))
            values.append(split.link_ms.get(link, 0.0))
            colors.append("tab:orange")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.1 * len(labels)), 3.8), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{outcome.compact}\npredicted {outcome.predicted_latency_ms:.4g} ms, "
                 f"T_const {outcome.t_const_ms:g} ms (blue: device, orange: link"
                 f"{'; the branches run in parallel, the slowest counts' if branched else ''})", fontsize=8)
    fig.savefig(path, dpi=120)


def _git_commit() -> tuple[str | None, bool | None]:
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_info(seed: int) -> dict:
    """How a run is made: seed, package versions, git commit, processor, GPU, threads, date, command."""
    import torch

    commit, dirty = _git_commit()
    return {"seed": seed, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": list(sys.orig_argv),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "lightning": _version("pytorch-lightning"), "ray": _version("ray"),
                         "jmsnas": _version("jmsnas")},
            "git_commit": commit, "git_dirty": dirty, "processor": processor_name(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def trials_table(trials: Sequence[dict]) -> list[str]:
    """Markdown rows of every trial (also readable as plain text)."""
    rows = ["| trial | overrides | status | val acc | test acc | predicted ms | T_const ms | feasible | network |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in trials:
        over = ", ".join(f"{k}={v}" for k, v in t["overrides"].items()) or "–"
        feasible = "–" if t["feasible"] is None else ("yes" if t["feasible"] else "no")
        rows.append(f"| {t['trial_id']} | {over} | {t['status']} | {_fmt(t['val_acc'], '.3f')} | "
                    f"{_fmt(t['test_acc'], '.3f')} | {_fmt(t['predicted_latency_ms'])} | "
                    f"{t['t_const_ms']:g} | {feasible} | `{t['compact'] or '–'}` |")
    return rows


def selections_table(selections: Sequence[dict]) -> list[str]:
    """Markdown rows of the choice per T_const; an infeasible constraint shows the lowest latency reached."""
    rows = ["| T_const ms | chosen trial | val acc | test acc | predicted ms | where |",
            "| --- | --- | --- | --- | --- | --- |"]
    for s in selections:
        if s["feasible"]:
            rows.append(f"| {s['t_const_ms']:g} | {s['trial_id']} | {s['val_acc']:.3f} | {s['test_acc']:.3f} | "
                        f"{s['predicted_latency_ms']:.4g} | `{s['best_dir']}/` |")
        else:
            rows.append(f"| {s['t_const_ms']:g} | **infeasible** | – | – | lowest reached: "
                        f"{_fmt(s['lowest_latency_ms'])} | {s['note']} |")
    return rows


def markdown_report(summary: dict, plots: dict[str, str]) -> str:
    """The text of ``report.md``."""
    overall = summary["overall"]
    lines = [f"# Search report: {summary['experiment']}", "",
             "How the run was made: `run.json`; the resolved experiment: `experiment.yaml`; every number below: "
             "`summary.json`.", "", "## Choice per latency constraint", "", *selections_table(summary["selections"]),
             ""]
    if overall is None:
        lines.append("**No constraint was met**: no `arch.json` is written at the top of the run directory.")
    else:
        lines.append(f"Overall: trial {overall['trial_id']} (T_const {overall['t_const_ms']:g} ms), validation "
                     f"accuracy {overall['val_acc']:.3f}, test accuracy {overall['test_acc']:.3f}, predicted "
                     f"latency {overall['predicted_latency_ms']:.4g} ms: `arch.json`, `{overall['best_dir']}/`.")
    lines += ["", "## Trials", "", *trials_table(summary["trials"]), ""]
    if "pareto" in plots:
        lines += ["## Accuracy vs predicted latency", "", f"![accuracy vs latency]({plots['pareto']})", ""]
    if "breakdown" in plots:
        lines += ["## Latency breakdown of the chosen network", "", f"![latency breakdown]({plots['breakdown']})", ""]
    return "\n".join(lines)


def write_outputs(run_dir: Path, experiment: str, trials: list[dict]) -> dict:
    """Choose per T_const, copy the chosen artifacts, write plots, ``summary.json`` and ``report.md``.

    Returns:
        The summary: what ``summary.json`` holds (a `Summary`'s JSON, ``version`` included).
    """
    selections = select_per_constraint(trials)
    overall = overall_choice(selections)
    copy_best(run_dir, selections, overall)
    plots: dict[str, str] = {}
    if _finished(trials):
        plot_pareto(run_dir / PARETO_PNG, trials, selections)
        plots["pareto"] = PARETO_PNG
    if overall is not None:
        plot_breakdown(run_dir / BREAKDOWN_PNG, Outcome.load(Path(overall["artifact_dir"]) / "outcome.json"))
        plots["breakdown"] = BREAKDOWN_PNG
    summary = Summary.of({"experiment": experiment, "trials": trials, "selections": selections, "overall": overall,
                          "plots": plots})
    summary.write(run_dir / "summary.json")
    data = summary.to_json()
    write_text(run_dir / "report.md", markdown_report(data, plots))
    return data
