"""The "Deployment" section of ``report.md`` and the one-line summaries the commands print, from deploy records.

Each entry is a ``deploy.json`` as a dict (``DeployRecord.to_dict()``) with the choice's ``t_const_ms``
and folder ``dir`` added.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from jmsnas.io import write_text


def exits_line(d: dict) -> str | None:
    """One line on the exits of a ``deploy.json``, or None without exits."""
    e = d.get("exits")
    if e is None:
        return None
    if not e["units"]:
        return "no exit pays on this plan (the network is kept as it is)"
    return (f"{len(e['units'])} exit(s) on {', '.join(e['devices'])}: test acc {100 * e['test_acc']:.2f} % "
            f"({e['acc_change_pp']:+.2f} pp), mean MACs {-100 * e['mac_reduction']:+.1f} %, mean latency "
            f"{e['mean_latency_ms']:.4g} ms (worst {e['worst_latency_ms']:.4g} ms)")


def measured_markdown(m: dict) -> list[str]:
    """Measured beside predicted latency per part, with the parts off by more than the flag threshold marked."""
    lines = ["", f"Latency of the exported parts on this machine ({m['method']}):", "",
             "| part | device | predicted [ms] | ONNX Runtime [ms] | TorchScript [ms] | |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p in m["parts"]:
        if p["status"] != "measured":
            lines.append(f"| {p['part']} | {p['device']} | {p['predicted_ms']:.4g} | {p['status']} | | |")
            continue
        if p["onnx_rel_err"] is None:
            lines.append(f"| {p['part']} | {p['device']} | {p['predicted_ms']:.4g} | {p['onnx_ms']:.4g} | "
                         f"{p['torchscript_ms']:.4g} | relays only (no layers planned) |")
            continue
        flag = f"**off by more than {100 * m['flag_above']:.0f} %**" if p["flagged"] else "ok"
        lines.append(f"| {p['part']} | {p['device']} | {p['predicted_ms']:.4g} | {p['onnx_ms']:.4g} "
                     f"({100 * p['onnx_rel_err']:+.0f} %) | {p['torchscript_ms']:.4g} "
                     f"({100 * p['torchscript_rel_err']:+.0f} %) | {flag} |")
    t = m["total"]
    lines.append(f"| total | | {t['predicted_ms']:.4g} | {t['onnx_ms']:.4g} | {t['torchscript_ms']:.4g} | "
                 f"{t['note']} |")
    return lines


#: The deployment plots (``stages.deploy_plots``) in the order and with the captions ``report.md`` gives them.
PLOT_CAPTIONS = {
    "deploy_breakdown": "Predicted latency of each deployed plan, compute per device and transfer per link, against "
                        "the baselines under the same latency models",
    "exit_termination": "Share of test samples leaving at each exit",
    "payload_accuracy": "Bytes sent per sample at each cut against test accuracy, one cut's compressor swapped "
                        "(none, 8 / 4 / 2-bit quantize), the others as deployed",
    "latency_measured": "Measured against predicted latency of the exported parts on this machine",
}


def plots_markdown(plots: Mapping[str, str]) -> list[str]:
    """The deployment plots drawn, each under its caption (none: nothing)."""
    lines = []
    for kind, caption in PLOT_CAPTIONS.items():
        if kind in plots:
            lines += [f"{caption}:", "", f"![{kind}]({plots[kind]})", ""]
    return lines


def deployment_markdown(done: Sequence[dict], plots: Mapping[str, str] | None = None) -> str:
    """The "Deployment" section of ``report.md``, with the deployment plots drawn (``stages.deploy_plots``)."""
    lines = ["## Deployment", "",
             "Per chosen network: the plan (`plan.json`), what crosses each cut, the accuracy of the split network "
             "on the test split against the unsplit one, and baselines under the same latency models.", "",
             *plots_markdown(plots or {})]
    for d in done:
        lines += [f"### T_const {d['t_const_ms']:g} ms (`{d['dir']}/`)", "",
                  f"Predicted latency {d['predicted_latency_ms']:.4g} ms on {' -> '.join(d['devices'])}, "
                  f"boundaries {d['boundaries']}; test accuracy {100 * d['test_acc_split']:.2f} % split vs "
                  f"{100 * d['test_acc_unsplit']:.2f} % unsplit ({d['acc_change_pp']:+.2f} pp).", ""]
        if d["cuts"]:
            lines += ["| cut | compressor | payload [B] | payload / input | link [ms] |",
                      "| --- | --- | --- | --- | --- |"]
            for c in d["cuts"]:
                frac = c["payload_bytes"] / d["input_bytes"] if d["input_bytes"] else math.nan
                lines.append(f"| {c['src']} -> {c['dst']} | {c['compressor']} | {c['payload_bytes']:g} | "
                             f"{100 * frac:.2f} % | {c['link_ms']:.4g} |")
            lines.append("")
        if d["baselines"]:
            lines += ["| baseline | network | latency [ms] | devices | boundaries | fits memory |",
                      "| --- | --- | --- | --- | --- | --- |"]
        for b in d["baselines"]:
            lines.append(f"| {b['name']} | {b['network']} | {b['latency_ms']:.4g} | {' -> '.join(b['path'])} | "
                         f"{b['boundaries']} | {'yes' if b['fits_memory'] else 'no'} |")
        if "exits" in d:
            e = d["exits"]
            where = ", ".join(f"unit {u} on {dev} (threshold {t:.3f})" for u, dev, t in
                              zip(e["units"], e["devices"], e["thresholds"], strict=True)) or "none pays"
            lines += ["", f"Early exits: {where}. Test accuracy {100 * e['test_acc']:.2f} % "
                      f"({e['acc_change_pp']:+.2f} pp), mean MACs {-100 * e['mac_reduction']:+.1f} %, latency "
                      f"mean {e['mean_latency_ms']:.4g} ms / worst case {e['worst_latency_ms']:.4g} ms; "
                      f"termination per exit {[round(t, 3) for t in e['termination']]} "
                      f"(`{d['dir']}/{e['dir']}/result.json`)."]
        if "verify" in d:
            v = d["verify"]
            ts = v["torchscript"]
            lines += ["", f"Bundle `{d['dir']}/bundle/`: TorchScript max |diff| {ts['max_abs_diff']:.2g}, "
                      f"top-1 agreement {ts['top1_agreement']:.3f}; ONNX max |diff| "
                      f"{v['onnx']['max_abs_diff']:.2g}, top-1 agreement {v['onnx']['top1_agreement']:.3f}"
                      f"{'' if v['ok'] else ' — NOT within tolerance'}."]
            if "exits" in v:
                lines.append(f"With its exits the bundle's runtime takes the same exit as the in-process cascade for "
                             f"{100 * v['exits']['torchscript']['same_exit']:.1f} % of "
                             f"{v['exits']['torchscript']['samples']} samples (TorchScript), "
                             f"{100 * v['exits']['onnx']['same_exit']:.1f} % (ONNX).")
        if "latency_measured" in d:
            lines += measured_markdown(d["latency_measured"])
        lines += [*(f"- {n}" for n in d.get("notes", [])), ""]
    return "\n".join(lines)


def write_deployment_section(report: Path, done: Sequence[dict], plots: Mapping[str, str] | None = None) -> None:
    """Replace (or add) the "Deployment" section at the end of ``report.md``."""
    text = report.read_text().split("\n## Deployment", 1)[0].rstrip("\n")
    new = text + "\n\n" + deployment_markdown(done, plots)
    write_text(report, new)
