"""The stages after the search, for one chosen network: partition, compression at the cuts, exits, export.

`deploy_choice` takes a folder with ``arch.json`` and ``model.pt`` (a ``best/t<T>ms/`` folder of a
search run, or any folder a user fills) and the experiment, and writes next to them:

- ``plan.json``: the exact plan of the network on the topology (``partition.costs.plan_arch``:
  chain DP, or the best path through a mesh), with the experiment's compressor at each cut, the
  cut tensors, calibrated compressor parameters, and the latency with the real payloads;
- ``bundle/`` (when the experiment has an ``export`` section): one TorchScript and one ONNX file per
  device and ``manifest.json``, verified against the unsplit model;
- ``deploy.json``: payload and accuracy change per cut, the verification, and the baselines
  (device-only, cloud-only, Neurosurgeon, HiveMind) under the same latency models.

With an ``exits`` section, early exits are added at the plan's device boundaries before export
(``jmsnas.exits.augment``, written to ``exits/``); ``plan.json`` then carries them, its
``total_latency_ms`` is the worst case and ``mean_latency_ms`` the expected latency, and each
device's exported model returns its exit's logits before its wire tensors. Learned compressors and
exits are not combined yet (``check_partition`` refuses it).

`deploy_run` does that for every feasible choice of a finished search and appends a "Deployment"
section to ``report.md``. A choice whose ``deploy.json`` exists is not redone (resume).

Compressors are given per cut in chain order (``partition.compressors``); the sender of cut m is
device m of the plan's path. Learned compressors are trained here, on the training split:
``autoencoder`` (paper 004's two steps) at any one-tensor cut, ``distilled_bottleneck`` (paper 002)
only at the first cut, replacing the first device's layers with a student head.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jmsnas.builders import cut_compressors, latency_models
from jmsnas.compress.autoencoder import fit_autoencoder, make_autoencoder
from jmsnas.compress.config import CompressorConfig
from jmsnas.compress.distilled import fit_student_head, make_student_head
from jmsnas.compress.quantize import LEARNED, Compressor
from jmsnas.config import Experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.errors import ConfigError
from jmsnas.exits import augment, plan_with_exits
from jmsnas.exits.costs import ExitLatency
from jmsnas.exits.export import exit_heads_by_device
from jmsnas.export.split import cut_tensors, run_segments, split_archnet
from jmsnas.export.writer import calibrate_plan, device_parts, export_bundle
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.baselines import baselines
from jmsnas.plan.costs import arch_costs, plan_arch
from jmsnas.plan.planners import plan_fixed
from jmsnas.runtime.bundle import load_bundle, verify_bundle
from jmsnas.runtime.measure import measure_parts, profile_meta
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.space.macs import count_macs

DEPLOY_JSON = "deploy.json"
PLAN_JSON = "plan.json"
BUNDLE_DIR = "bundle"
EXITS_DIR = "exits"


def check_partition(exp: Experiment) -> None:
    """Fail now, naming the field, on compressors the topology has no cut for."""
    part = exp.config.partition
    if part is None:
        return
    longest = max(len(p) for p in exp.topology.paths()) - 1
    if len(part.compressors) > longest:
        raise ConfigError(f"{len(part.compressors)} compressors given but a plan on this topology has at most "
                          f"{longest} cut(s); give one per cut in chain order", file=exp.path,
                          field="partition.compressors")
    if exp.config.exits is not None:
        for i, c in enumerate(part.compressors):
            if c.kind in LEARNED:
                raise ConfigError(f"{c.kind!r} cannot be combined with early exits yet: training it changes the "
                                  "layers around the cut, which the exit heads and thresholds were calibrated on; "
                                  "use 'quantize' or 'none' here, or remove the exits section",
                                  file=exp.path, field=f"partition.compressors[{i}].kind")
    for i, c in enumerate(part.compressors[1:], start=1):
        if c.kind == "distilled_bottleneck":
            raise ConfigError("distilled_bottleneck replaces the first device's layers with a student head "
                              "(paper 002), so it can only be the first cut's compressor; use 'autoencoder' here",
                              file=exp.path, field=f"partition.compressors[{i}].kind")


def load_choice(choice_dir: Path) -> tuple[ArchSpec, nn.Module]:
    """The network of a choice folder: ``arch.json`` and the weights in ``model.pt`` (no pickle)."""
    spec = ArchSpec.load_json(choice_dir / "arch.json")
    model = build_model(spec)
    state = torch.load(choice_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return spec, model.eval()


def deploy_choice(exp: Experiment, choice_dir: Path, *, seed: int | None = None,
                  datamodule: JmsnasDataModule | None = None, t_const_ms: float | None = None) -> dict[str, Any]:
    """Plan, compress, add exits, export and verify the network in ``choice_dir``; write its artifacts there.

    Args:
        t_const_ms: the worst-case latency the exits must keep; default: the choice's ``outcome.json``,
            else the strategy's ``t_const_ms``.

    Returns:
        What ``deploy.json`` holds.
    """
    cfg = exp.config
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    spec, model = load_choice(choice_dir)
    models = latency_models(exp)
    costs = arch_costs(spec, models)
    given = list(cfg.partition.compressors) if cfg.partition is not None else []
    compressors = cut_compressors(exp, spec.dims)
    plan = plan_arch(costs, exp.topology, compressors)  # as the search predicted it
    dm = datamodule or JmsnasDataModule(cfg.dataset, seed=cfg.seed)
    dm.setup()
    exit_heads = None
    if cfg.exits is not None:
        t_const_ms = _t_const(exp, choice_dir, t_const_ms)
        plan, exit_heads = _split_with_exits(exp, plan, spec, model, dm, costs, compressors, seed, t_const_ms)
    train_x = [x for x, _ in dm.train_dataloader()]
    calib = train_x[:8]
    segments: list[nn.Module] = list(split_archnet(model, plan.boundaries()))
    plan = plan.with_cut_tensors(cut_tensors(model, calib[0][:1], plan.boundaries()))
    codecs: dict[int, tuple[nn.Module, nn.Module]] = {}
    learned_params: dict[int, dict] = {}
    notes: list[str] = []
    epochs = (cfg.partition.train_epochs, cfg.partition.finetune_epochs) if cfg.partition is not None else (1, 0)
    for k, cut in enumerate(plan.cuts):
        if cut.compressor not in LEARNED:
            continue
        try:
            if cut.compressor == "autoencoder":
                segments, codecs[k], learned_params[k] = _autoencoder(segments, k, given[k], model, train_x, calib,
                                                                      epochs)
            else:
                segments, codecs[k], learned_params[k], note = _distilled(segments, plan, spec, given[k], train_x,
                                                                          epochs)
                notes.append(note)
        except ConfigError as exc:
            raise ConfigError(f"{exc.message} (plan: {' -> '.join(plan.devices)}, boundaries {plan.boundaries()})",
                              file=exp.path, field=exc.field) from None
    plan = calibrate_plan(plan, segments, calib)
    if learned_params:
        plan = plan.with_compressor_params([learned_params.get(k, c.compressor_params)
                                            for k, c in enumerate(plan.cuts)])
    plan = _with_real_payloads(plan, segments, codecs, calib[0][:1], exp)
    exits = None
    if cfg.exits is not None:
        exits, plan, segments, model = _exits(exp, choice_dir, plan, spec, model, dm, calib, seed, t_const_ms,
                                              exit_heads)
    plan.to_json(choice_dir / PLAN_JSON)

    test = list(dm.test_dataloader())
    pipeline = _Pipeline(segments, plan, codecs)
    acc_split = _accuracy(pipeline, test)
    acc_full = _accuracy(model, test)
    result: dict[str, Any] = {
        "arch": spec.compact(), "plan": PLAN_JSON, "predicted_latency_ms": plan.total_latency_ms,
        "devices": plan.devices, "boundaries": plan.boundaries(),
        "cuts": [{"src": c.src, "dst": c.dst, "compressor": c.compressor, "payload_bytes": c.payload_bytes,
                  "link_ms": c.link_ms} for c in plan.cuts],
        "mean_latency_ms": plan.mean_latency_ms, "input_bytes": costs.input_bytes, "test_acc_unsplit": acc_full,
        "test_acc_split": acc_split,
        "acc_change_pp": 100 * (acc_split - acc_full), "notes": notes,
        "baselines": [b.to_dict() for b in baselines(spec, exp.search_space, exp.topology, models)],
    }
    if exits is not None:
        result["exits"] = _exits_summary(exits, plan)
    if cfg.export is not None:
        heads = exit_heads_by_device(exits, plan) if exits is not None and exits.exits else None
        export_bundle(segments, plan, calib[0], choice_dir / BUNDLE_DIR, codecs=codecs, exits=heads)
        if cfg.export.verify:
            result["verify"] = _verify(choice_dir / BUNDLE_DIR, model, test[:4], lossless=not any(
                c.compressor != "none" for c in plan.cuts))
            if heads:
                result["verify"]["exits"] = _verify_exits(choice_dir / BUNDLE_DIR, exits, test[:4])
        if cfg.export.measure:
            profiles = {d.name: profile_meta(d, cfg.profiles_dir) for d in exp.topology.devices}
            result["latency_measured"] = measure_parts(choice_dir / BUNDLE_DIR, plan, test[0][0], profiles)
        result["bundle"] = BUNDLE_DIR
    (choice_dir / DEPLOY_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _t_const(exp: Experiment, choice_dir: Path, t_const_ms: float | None) -> float:
    if t_const_ms is not None:
        return t_const_ms
    outcome = choice_dir / "outcome.json"
    return float(json.loads(outcome.read_text())["t_const_ms"] if outcome.is_file() else exp.config.strategy.t_const_ms)


def _split_with_exits(exp: Experiment, plan: DeploymentPlan, spec: ArchSpec, model: nn.Module, dm: JmsnasDataModule,
                      costs, compressors: Sequence[Compressor], seed: int, t_const_ms: float):
    """The split to put exits on: paper 001 maps the network onto the devices together with its exits.

    The latency-optimal split without exits often runs everything on one device and leaves no inner
    boundary for an exit. So ``augment`` first enumerates every split with its exits (links priced
    with the experiment's compressors, payloads estimated); when its choice has exits, that split
    becomes the plan, with those compressors. Returns the plan and the heads trained for it (reused
    by the second, exact pass).
    """
    cfg = exp.config
    print(f"exits       enumerating splits with exits on {' -> '.join(plan.devices)}, T_const {t_const_ms:g} ms ...",
          flush=True)
    first = augment(model, dm, cfg.exits, exp.topology, ExitLatency(models=latency_models(exp), spec=spec),
                    t_const_ms=t_const_ms, seed=seed, compressors=compressors)
    p = first.placement
    heads = None if cfg.exits.joint_finetune else first.heads  # fine-tuned heads belong to a fine-tuned backbone
    if not first.exits or (tuple(p.path) == tuple(plan.devices) and tuple(p.boundaries) == tuple(plan.boundaries())):
        return plan, heads or None
    return plan_fixed(costs.latency_ms, costs.output_bytes, costs.input_bytes, exp.topology, p.path, p.boundaries,
                      compressors), heads


def _exits(exp: Experiment, choice_dir: Path, plan: DeploymentPlan, spec: ArchSpec, model: nn.Module,
           dm: JmsnasDataModule, calib: Sequence[torch.Tensor], seed: int, t_const_ms: float,
           trained_heads: dict | None):
    """Early exits at the plan's device boundaries (``exits.augment``); the plan re-evaluated with them.

    Returns:
        The ``ExitsResult``, the plan with its exits, the segments of the backbone (fine-tuned with
        the exits if that was kept) and that backbone.
    """
    cfg = exp.config
    print(f"exits       {choice_dir.name}: heads at the boundaries {plan.boundaries()[1:-1]} of "
          f"{' -> '.join(plan.devices)}, T_const {t_const_ms:g} ms ...", flush=True)
    result = augment(model, dm, cfg.exits, exp.topology, ExitLatency(models=latency_models(exp), spec=spec),
                     t_const_ms=t_const_ms, split=plan, run_dir=choice_dir / EXITS_DIR, seed=seed,
                     trained_heads=trained_heads)
    backbone = result.graph.model.eval()
    segments = list(split_archnet(backbone, plan.boundaries()))
    if backbone is not model:  # fine-tuned with the exits: the quantisers' ranges are measured again
        plan = calibrate_plan(plan, segments, calib)
    return result, plan_with_exits(result, exp.topology.kind, base_plan=plan), segments, backbone


def _exits_summary(result, plan: DeploymentPlan) -> dict[str, Any]:
    test = result.test
    return {"dir": EXITS_DIR, "units": result.exits, "thresholds": result.thresholds,
            "devices": [e.device for e in plan.exits], "test_acc": test.accuracy,
            "acc_change_pp": -test.accuracy_loss_pp, "mac_reduction": test.mac_reduction,
            "mean_latency_ms": test.mean_latency_ms, "worst_latency_ms": test.worst_latency_ms,
            "termination": [r["termination"] for r in test.exits]}


def _verify_exits(bundle: Path, result, batches) -> dict[str, Any]:
    """The bundle's runtime decisions (``run_exits``) against the in-process cascade, per backend."""
    out = {}
    for backend in ("torchscript", "onnx"):
        runtime = load_bundle(bundle, backend)
        same_exit = same_top1 = total = 0
        for x, _ in batches:
            logits, index = runtime.run_exits(x)
            with torch.no_grad():
                ref_logits, ref_index = result.net(x)
            same_exit += int((index == ref_index).sum())
            same_top1 += int((logits.argmax(-1) == ref_logits.argmax(-1)).sum())
            total += len(x)
        out[backend] = {"same_exit": same_exit / max(total, 1), "top1_agreement": same_top1 / max(total, 1),
                        "samples": total}
    return out


def _autoencoder(segments: list[nn.Module], k: int, c: CompressorConfig, model: nn.Module,
                 train_x: Sequence[torch.Tensor], calib: Sequence[torch.Tensor], epochs: tuple[int, int]):
    with torch.no_grad():
        sample = run_segments(segments[:k + 1], calib[0][:2])
    if len(sample) != 1 or sample[0].dim() not in (3, 4):
        raise ConfigError(f"cut {k} carries {len(sample)} tensor(s) of shape {[tuple(t.shape[1:]) for t in sample]}; "
                          "an autoencoder needs one (C, L) or (C, H, W) feature map; use 'quantize' here",
                          field=f"partition.compressors[{k}].kind")
    shape = tuple(sample[0].shape[1:])
    reduction = max(1, round(1 / c.channel_fraction))
    encoder, decoder = make_autoencoder(shape, reduction=reduction, nonnegative=bool((sample[0] >= 0).all()))
    fit = fit_autoencoder(encoder, decoder, segments[:k + 1], segments[k + 1:], model, train_x, bits=c.bits,
                          reduction=reduction, epochs=epochs[0], finetune_epochs=epochs[1])
    return [*segments[:k + 1], *fit.back], (fit.encoder, fit.decoder), fit.params


def _distilled(segments: list[nn.Module], plan: DeploymentPlan, spec: ArchSpec, c: CompressorConfig,
               train_x: Sequence[torch.Tensor], epochs: tuple[int, int]):
    if plan.segments[0].stop == 0:
        raise ConfigError(f"the plan runs no layer on {plan.devices[0]} (it sends the input), so there is no head "
                          "for a distilled bottleneck to replace; use 'quantize' or 'autoencoder'",
                          field="partition.compressors[0].kind")
    with torch.no_grad():
        sent = run_segments(segments[:1], train_x[0][:1])
    if len(sent) != 1:
        raise ConfigError(f"the first cut carries {len(sent)} tensors (a skip connection crosses it); a distilled "
                          "bottleneck replaces a head with one output; use 'quantize' here",
                          field="partition.compressors[0].kind")
    (target,) = sent
    encoder, decoder = make_student_head(spec.input_shape, tuple(target.shape[1:]), c.channel_fraction,
                                         nonnegative=bool((target >= 0).all()))
    fit = fit_student_head(encoder, decoder, segments[:1], train_x, bits=c.bits, epochs=epochs[0],
                           finetune_epochs=epochs[1])
    teacher, student = count_macs(segments[0], spec.input_shape), count_macs(encoder, spec.input_shape)
    note = (f"distilled bottleneck: student head {student:,} MACs replaces {teacher:,} on {plan.devices[0]} "
            f"(final SSE {fit.finetune_history[-1] if fit.finetune_history else fit.history[-1]:.4g} per sample)")
    return [encoder, *segments[1:]], fit.codec, {"student_macs": student, "teacher_head_macs": teacher,
                                                 **fit.params}, note


def _with_real_payloads(plan: DeploymentPlan, segments, codecs, x: torch.Tensor, exp: Experiment) -> DeploymentPlan:
    """The plan with the bytes each cut really sends and the latency they give (estimates replaced)."""
    cuts, values = [], (x,)
    parts = device_parts(plan, segments, codecs)
    with torch.no_grad():
        for k, cut in enumerate(plan.cuts):
            values = parts[k](*values)
            payload = float(sum(v.numel() * v.element_size() for v in values))
            cuts.append(replace(cut, payload_bytes=payload, link_ms=exp.topology.link(cut.src, cut.dst)
                                .latency_ms(payload)))
    segs = list(plan.segments)
    first = plan.cuts[0].compressor if plan.cuts else "none"
    if first == "distilled_bottleneck":
        p = plan.cuts[0].compressor_params
        scale = p["student_macs"] / max(1, p["teacher_head_macs"])
        segs[0] = replace(segs[0], compute_ms=segs[0].compute_ms * scale)
    total = sum(s.compute_ms for s in segs) + sum(c.link_ms for c in cuts)
    return replace(plan, segments=tuple(segs), cuts=tuple(cuts), total_latency_ms=float(total))


class _Pipeline(nn.Module):
    """The split network run in process, with every codec: what the bundle computes."""

    def __init__(self, segments, plan: DeploymentPlan, codecs) -> None:
        super().__init__()
        self.parts = nn.ModuleList(device_parts(plan, segments, codecs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = (x,)
        for part in self.parts:
            values = part(*values)
        return values[0]


def _accuracy(fn, batches) -> float:
    hits = total = 0
    with torch.no_grad():
        for x, y in batches:
            hits += int((fn(x).argmax(-1) == y).sum())
            total += len(y)
    return hits / max(total, 1)


def _verify(bundle: Path, model: nn.Module, batches, lossless: bool) -> dict[str, Any]:
    out = {}
    for backend in ("torchscript", "onnx"):
        check = verify_bundle(bundle, model, [x for x, _ in batches], backend)
        out[backend] = {"max_abs_diff": check.max_abs_diff, "top1_agreement": check.top1_agreement,
                        "samples": check.samples}
    out["lossless"] = lossless
    if lossless:
        tol = {"torchscript": 1e-5, "onnx": 1e-4}
        out["ok"] = all(out[b]["max_abs_diff"] <= tol[b] for b in tol)
    else:
        out["ok"] = True  # lossy: the agreement rate is the figure; nothing to hold it against
    return out


def deploy_run(exp: Experiment, run_dir: Path, summary: dict) -> list[dict]:
    """`deploy_choice` for every feasible choice of a finished search; append the section to ``report.md``."""
    done = []
    for sel in summary["selections"]:
        if not sel["feasible"]:
            continue
        choice = run_dir / sel["best_dir"]
        if (choice / DEPLOY_JSON).is_file():
            result = json.loads((choice / DEPLOY_JSON).read_text())
        else:
            print(f"deploy      {sel['best_dir']}: plan, compress, export ...", flush=True)
            result = deploy_choice(exp, choice, t_const_ms=sel["t_const_ms"])
        done.append({"t_const_ms": sel["t_const_ms"], "dir": sel["best_dir"], **result})
    report = run_dir / "report.md"
    if done and report.is_file():
        text = report.read_text().split("\n## Deployment", 1)[0].rstrip("\n")
        report.write_text(text + "\n\n" + deployment_markdown(done))
    return done


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


def deployment_markdown(done: Sequence[dict]) -> str:
    """The "Deployment" section of ``report.md``."""
    lines = ["## Deployment", "",
             "Per chosen network: the plan (`plan.json`), what crosses each cut, the accuracy of the split network "
             "on the test split against the unsplit one, and baselines under the same latency models.", ""]
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
