"""The stages after the search, for one chosen network: partition, compression at the cuts, export.

`deploy_choice` takes a folder with ``arch.json`` and ``model.pt`` (a ``best/t<T>ms/`` folder of a
search run, or any folder a user fills) and the experiment, and writes next to them:

- ``plan.json``: the exact plan of the network on the topology (``partition.costs.plan_arch``:
  chain DP, or the best path through a mesh), with the experiment's compressor at each cut, the
  cut tensors, calibrated compressor parameters, and the latency with the real payloads;
- ``bundle/`` (when the experiment has an ``export`` section): one TorchScript and one ONNX file per
  device and ``manifest.json``, verified against the unsplit model;
- ``deploy.json``: payload and accuracy change per cut, the verification, and the baselines
  (device-only, cloud-only, Neurosurgeon, HiveMind) under the same latency models.

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

from jmsnas.config import DEFAULT_PROFILES_DIR, CompressorConfig, Experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.errors import ConfigError
from jmsnas.partition.baselines import baselines
from jmsnas.partition.bottleneck import fit_autoencoder, make_autoencoder
from jmsnas.partition.bundle import verify_bundle
from jmsnas.partition.compress import LEARNED, Compressor
from jmsnas.partition.costs import arch_costs, latency_models, plan_arch
from jmsnas.partition.distilled import fit_student_head, make_student_head
from jmsnas.partition.export import calibrate_plan, export_bundle
from jmsnas.partition.plan import DeploymentPlan
from jmsnas.partition.split import cut_tensors, run_segments, split_archnet
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.space.macs import count_macs

DEPLOY_JSON = "deploy.json"
PLAN_JSON = "plan.json"
BUNDLE_DIR = "bundle"


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
    for i, c in enumerate(part.compressors[1:], start=1):
        if c.kind == "distilled_bottleneck":
            raise ConfigError("distilled_bottleneck replaces the first device's layers with a student head "
                              "(paper 002), so it can only be the first cut's compressor; use 'autoencoder' here",
                              file=exp.path, field=f"partition.compressors[{i}].kind")


def _compressor(c: CompressorConfig, dims: int) -> Compressor:
    return Compressor(c.kind, c.bits, c.channel_fraction, 1.0 / 2**dims)


def load_choice(choice_dir: Path) -> tuple[ArchSpec, nn.Module]:
    """The network of a choice folder: ``arch.json`` and the weights in ``model.pt`` (no pickle)."""
    spec = ArchSpec.load_json(choice_dir / "arch.json")
    model = build_model(spec)
    state = torch.load(choice_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return spec, model.eval()


def deploy_choice(exp: Experiment, choice_dir: Path, *, seed: int | None = None,
                  datamodule: JmsnasDataModule | None = None) -> dict[str, Any]:
    """Plan, compress, export and verify the network in ``choice_dir``; write its artifacts there.

    Returns:
        What ``deploy.json`` holds.
    """
    cfg = exp.config
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    spec, model = load_choice(choice_dir)
    models = latency_models(exp.topology, cfg.profiles_dir or DEFAULT_PROFILES_DIR)
    costs = arch_costs(spec, models)
    plan = plan_arch(costs, exp.topology)  # the path and boundaries; compressors are set on it below
    given = list(cfg.partition.compressors) if cfg.partition is not None else []
    comp = {plan.devices[m]: _compressor(c, spec.dims) for m, c in enumerate(given[:len(plan.cuts)])}
    plan = plan_arch(costs, exp.topology, comp)
    dm = datamodule or JmsnasDataModule(cfg.dataset, seed=cfg.seed)
    dm.setup()
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
    plan = _with_real_payloads(plan, segments, codecs, calib[0][:1], exp, costs, spec)
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
        "input_bytes": costs.input_bytes, "test_acc_unsplit": acc_full, "test_acc_split": acc_split,
        "acc_change_pp": 100 * (acc_split - acc_full), "notes": notes,
        "baselines": [b.to_dict() for b in baselines(spec, exp.search_space, exp.topology, models)],
    }
    if cfg.export is not None:
        export_bundle(segments, plan, calib[0], choice_dir / BUNDLE_DIR, codecs=codecs)
        if cfg.export.verify:
            result["verify"] = _verify(choice_dir / BUNDLE_DIR, model, test[:4], lossless=not any(
                c.compressor != "none" for c in plan.cuts))
        result["bundle"] = BUNDLE_DIR
    (choice_dir / DEPLOY_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


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


def _with_real_payloads(plan: DeploymentPlan, segments, codecs, x: torch.Tensor, exp: Experiment, costs,
                        spec: ArchSpec) -> DeploymentPlan:
    """The plan with the bytes each cut really sends and the latency they give (estimates replaced)."""
    from jmsnas.partition.export import device_parts

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
        from jmsnas.partition.export import device_parts

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
            result = deploy_choice(exp, choice)
        done.append({"t_const_ms": sel["t_const_ms"], "dir": sel["best_dir"], **result})
    report = run_dir / "report.md"
    if done and report.is_file():
        text = report.read_text().split("\n## Deployment", 1)[0].rstrip("\n")
        report.write_text(text + "\n\n" + deployment_markdown(done))
    return done


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
        if "verify" in d:
            v = d["verify"]
            ts = v["torchscript"]
            lines += ["", f"Bundle `{d['dir']}/bundle/`: TorchScript max |diff| {ts['max_abs_diff']:.2g}, "
                      f"top-1 agreement {ts['top1_agreement']:.3f}; ONNX max |diff| "
                      f"{v['onnx']['max_abs_diff']:.2g}, top-1 agreement {v['onnx']['top1_agreement']:.3f}"
                      f"{'' if v['ok'] else ' — NOT within tolerance'}."]
        lines += [*(f"- {n}" for n in d.get("notes", [])), ""]
    return "\n".join(lines)
