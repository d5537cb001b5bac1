"""The README's quickstart on a fresh clone: set-up and run timed separately, with the run's results.

Clones this repository (its committed HEAD) into a temporary folder, runs ``make setup`` (creates
``.venv`` and installs jmsnas) and then ``make quickstart`` (the search of
``experiments/quickstart.yaml`` through Ray Tune), and reads the run's ``summary.json``: test
accuracy and predicted latency of the network chosen for each T_const, and each choice's
``deploy.json`` (plan, exits, verification of the exported bundle). Writes
``benchmarks/results/quickstart.{md,json}`` and copies the run's ``report.md`` and plots to
``benchmarks/results/quickstart_report/``.

Usage::

    python benchmarks/quickstart.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
REPORT = RESULTS / "quickstart_report"


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def main() -> int:
    from jmsnas.latency.watch import ContentionWatch

    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "jmsnas"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                                check=True).stdout.strip()
        # the wall times are void if anything else ran meanwhile; watched from here: the clone is not timed,
        # and its git processes, ended before the watch reads them, would count as someone else's CPU
        watch = ContentionWatch()
        setup_s = timed(["make", "setup"], clone, Path(tmp) / "setup.log")
        watch.checkpoint("make setup")
        run_s = timed(["make", "quickstart"], clone, Path(tmp) / "run.log")
        watch.checkpoint("make quickstart")
        summary = json.loads((clone / "runs" / "quickstart" / "summary.json").read_text())
        REPORT.mkdir(parents=True, exist_ok=True)  # the run's report and plots, kept to be looked at
        for old in REPORT.iterdir():
            old.unlink()
        for f in [clone / "runs" / "quickstart" / "report.md", *(clone / "runs" / "quickstart").glob("*.png")]:
            shutil.copy2(f, REPORT / f.name)
        tail = (Path(tmp) / "run.log").read_text().splitlines()[-40:]
        deployed = {}
        for c in summary["selections"]:
            path = clone / "runs" / "quickstart" / c["best_dir"] / "deploy.json"
            if path.is_file():
                d = json.loads(path.read_text())
                deployed[c["best_dir"]] = {k: d.get(k) for k in (
                    "predicted_latency_ms", "mean_latency_ms", "devices", "boundaries", "cuts", "test_acc_split",
                    "test_acc_unsplit", "acc_change_pp", "exits", "verify", "latency_measured")}
    choices = summary["selections"]
    result = {
        "commit": commit, "setup_wall_s": setup_s, "run_wall_s": run_s,
        "t_const_ms": [c["t_const_ms"] for c in choices],
        "predicted_latency_ms": [c.get("predicted_latency_ms", c.get("lowest_latency_ms")) for c in choices],
        "test_acc": [c.get("test_acc") for c in choices],
        "feasible": [c.get("feasible") for c in choices],
        "selections": choices, "overall": summary.get("overall"), "deployed": deployed,
        "hardware": f"{os.cpu_count()} cores, x86_64 VM", "command": "python benchmarks/quickstart.py",
        "run_log_tail": tail, "contention": watch.summary(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quickstart.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Quickstart from a fresh clone", "", f"Command: `{result['command']}` (commit {commit[:10]}); "
             f"{result['hardware']}.", "", f"- set-up (`make setup`: venv + install): {setup_s:.0f} s",
             f"- run (`make quickstart`: Ray Tune, {len(choices)} T_const levels): {run_s:.0f} s", "",
             "| T_const (ms) | chosen network's predicted latency (ms) | feasible | test accuracy |",
             "| --- | --- | --- | --- |"]
    for c in choices:
        pred = c.get("predicted_latency_ms", c.get("lowest_latency_ms"))
        acc = c.get("test_acc")
        lines.append(f"| {c['t_const_ms']:g} | {'-' if pred is None else f'{pred:.2f}'} | {c.get('feasible')} | "
                     f"{'-' if acc is None else f'{acc:.2%}'} |")
    if deployed:
        lines += ["", "After the search (partition with the experiment's compressors, exits, export; `deploy.json` of "
                  "each choice): predicted latency with the real payloads, worst case and mean with the exits.", "",
                  "| choice | devices / boundaries | worst / mean latency (ms) | exits | test acc. split (change) | "
                  "bundle max abs diff (TorchScript) |", "| --- | --- | --- | --- | --- | --- |"]
        for name, d in deployed.items():
            e = d.get("exits") or {}
            units, devs = e.get("units", []), e.get("devices", [])
            ex = ", ".join(f"unit {u} on {dev}" for u, dev in zip(units, devs, strict=True)) or "none"
            if e.get("units"):
                ex += f" ({-100 * e['mac_reduction']:+.1f} % MACs, {e['acc_change_pp']:+.2f} pp)"
            mean = d.get("mean_latency_ms") or d["predicted_latency_ms"]
            verify = (d.get("verify") or {}).get("torchscript", {}).get("max_abs_diff")
            lines.append(f"| `{name}` | {' -> '.join(d['devices'])} {d['boundaries']} | "
                         f"{d['predicted_latency_ms']:.2f} / {mean:.2f} | {ex} | {d['test_acc_split']:.2%} "
                         f"({d['acc_change_pp']:+.2f} pp) | {'-' if verify is None else f'{verify:.2g}'} |")
        lines += ["", "Exported parts timed on this machine where the device has a measured profile "
                  "(`deploy.json: latency_measured`; predicted = the plan's compute of the part):", "",
                  "| choice | device | predicted (ms) | ONNX Runtime (ms) | TorchScript (ms) | status |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, d in deployed.items():
            for part in (d.get("latency_measured") or {}).get("parts", []):
                got = (f"{part['onnx_ms']:.3f} | {part['torchscript_ms']:.3f}" if "onnx_ms" in part else " | ")
                flag = " (flagged: > 15 % off)" if part.get("flagged") else ""
                lines.append(f"| `{name}` | {part['device']} | {part['predicted_ms']:.3f} | {got} | "
                             f"{part['status']}{flag} |")
    lines += ["", watch.markdown()]
    (RESULTS / "quickstart.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
