"""The deploy stage, for one chosen network: plan → exits → fit compressors → reprice → export → verify → record.

`deploy_choice` takes a folder with ``arch.json`` and ``model.pt`` (a ``best/t<T>ms/`` folder of a
search run, or any folder a user fills) and the experiment, and writes next to them:

- ``plan.json``: the exact plan of the network on the topology (``plan.costs.plan_arch``:
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
section to ``report.md`` (``deploy_report``). ``deploy.json`` is a ``DeployRecord`` (``deploy_record``).
A choice whose ``deploy.json`` exists is not redone (resume).

Compressors are given per cut in chain order (``partition.compressors``); the sender of cut m is
device m of the plan's path. Learned compressors are trained on the training split
(``compress.fit``): ``autoencoder`` (paper 004's two steps) at any one-tensor cut,
``distilled_bottleneck`` (paper 002) only at the first cut, replacing the first device's layers with a
student head.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from jmsnas.builders import cut_compressors, latency_models, profile_metas
from jmsnas.builders import datamodule as build_datamodule
from jmsnas.checks import check_partition
from jmsnas.compress.fit import LearnedCodecs, fit_learned
from jmsnas.compress.pricing import codec_compute_ms, codec_ops, with_codec_compute
from jmsnas.compress.quantize import Compressor
from jmsnas.compress.registry import COMPRESSORS
from jmsnas.config import Experiment
from jmsnas.data import JmsnasDataModule
from jmsnas.devices import torch_device
from jmsnas.errors import ConfigError
from jmsnas.exits import augment, plan_with_exits
from jmsnas.exits.costs import ExitLatency
from jmsnas.exits.export import exit_heads_by_device
from jmsnas.exits.predictor_fit import FittedPredictor
from jmsnas.exits.result import ExitsResult
from jmsnas.exits.skip import SkippingCascade
from jmsnas.export.split import cut_tensors, split_archnet
from jmsnas.export.writer import calibrate_plan, device_parts, export_bundle
from jmsnas.latency.model import LatencyModel
from jmsnas.plan.artifact import DeploymentPlan
from jmsnas.plan.baselines import baselines
from jmsnas.plan.costs import LayerCosts, arch_costs, plan_arch, sequential_latency_ms
from jmsnas.plan.planners import plan_fixed
from jmsnas.plan.wire import tensor_bytes
from jmsnas.report import Summary, plot_pareto
from jmsnas.runtime.measure import measure_parts
from jmsnas.runtime.verify import SplitPipeline, accuracy, verify_exit_decisions, verify_parts
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.stages.deploy_branched import deploy_branched_choice, is_branched_choice
from jmsnas.stages.deploy_exits import EXITS_DIR, fit_adaptive_thresholds, fit_predictor
from jmsnas.stages.deploy_plots import write_deploy_plots
from jmsnas.stages.deploy_record import CutRecord, DeployRecord, ExitsSummary
from jmsnas.stages.deploy_report import deployment_markdown, exits_line, write_deployment_section
from jmsnas.stages.payload_sweep import payload_sweep
from jmsnas.strategies.records import Outcome

__all__ = ["BUNDLE_DIR", "DEPLOY_JSON", "EXITS_DIR", "PLAN_JSON", "check_partition", "deploy_choice", "deploy_run",
           "deployment_markdown", "exits_line", "load_choice"]

DEPLOY_JSON = "deploy.json"
PLAN_JSON = "plan.json"
BUNDLE_DIR = "bundle"

log = logging.getLogger("jmsnas.deploy")


def load_choice(choice_dir: Path) -> tuple[ArchSpec, nn.Module]:
    """The network of a choice folder: ``arch.json`` and the weights in ``model.pt`` (no pickle)."""
    spec = ArchSpec.load_json(choice_dir / "arch.json")
    model = build_model(spec)
    state = torch.load(choice_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return spec, model.eval()


@dataclass
class _Choice:
    """One chosen network and what every step of its deployment reads."""

    exp: Experiment
    dir: Path
    spec: ArchSpec
    model: nn.Module
    dm: JmsnasDataModule
    models: dict[str, LatencyModel]
    costs: LayerCosts
    compressors: list[Compressor]
    seed: int
    device: torch.device  # where exits and learned compressors train: the experiment's trainer.accelerator
    train_x: list[torch.Tensor] = field(default_factory=list)  # loaded after the exit split (batch order)
    test: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    predictor: FittedPredictor | None = None  # exits.predictor, fitted to the chosen EENN
    adaptive: dict | None = None  # exits.adaptive: the manifest's entry

    @property
    def calib(self) -> list[torch.Tensor]:
        return self.train_x[:8]


def deploy_choice(exp: Experiment, choice_dir: Path, *, seed: int | None = None,
                  datamodule: JmsnasDataModule | None = None, t_const_ms: float | None = None) -> DeployRecord:
    """Plan, compress, add exits, export and verify the network in ``choice_dir``; write its artifacts there.

    Args:
        t_const_ms: the worst-case latency the exits must keep; default: the choice's ``outcome.json``,
            else the strategy's ``t_const_ms``.

    Returns:
        What ``deploy.json`` holds.
    """
    if is_branched_choice(choice_dir):  # parallel branches on a mesh: eq. (2), its own, simpler stage
        return deploy_branched_choice(exp, choice_dir, datamodule=datamodule, seed=seed)
    ch = _load(exp, choice_dir, exp.config.seed if seed is None else seed, datamodule)
    plan = plan_arch(ch.costs, exp.topology, ch.compressors)  # as the search predicted it
    exit_heads = None
    if exp.config.exits is not None:
        t_const_ms = _t_const(exp, choice_dir, t_const_ms)
        plan, exit_heads = _split_with_exits(exp, plan, ch.spec, ch.model, ch.dm, ch.costs, ch.compressors, ch.seed,
                                             t_const_ms, ch.device)
    ch.train_x = [x for x, _ in ch.dm.train_dataloader()]
    segments = list(split_archnet(ch.model, plan.boundaries()))
    plan = plan.with_cut_tensors(cut_tensors(ch.model, ch.calib[0][:1], plan.boundaries()))
    learned, plan = _fit_compressors(ch, plan, segments)
    plan = _with_real_payloads(plan, learned.segments, learned.codecs, ch.calib[0][:1], exp)
    exits, model, segments = None, ch.model, learned.segments
    if exp.config.exits is not None:
        exits, plan, segments, model = _exits(exp, choice_dir, plan, ch.spec, ch.model, ch.dm, ch.calib, ch.seed,
                                              t_const_ms, exit_heads, ch.device)
        ch.predictor, plan = fit_predictor(ch, exits, plan, t_const_ms)
        ch.adaptive = fit_adaptive_thresholds(ch, exits, plan)
    plan = _price_codecs(ch, plan, segments, learned)
    plan.to_json(choice_dir / PLAN_JSON)
    record = _record(ch, plan, segments, learned, model, exits)
    if exp.config.export is not None:
        record = _export(ch, plan, segments, learned, model, exits, record)
    record.save(choice_dir / DEPLOY_JSON)
    return record


def _load(exp: Experiment, choice_dir: Path, seed: int, datamodule: JmsnasDataModule | None) -> _Choice:
    device = torch_device(exp.config.trainer)  # before any work: a GPU that is not there fails at once
    torch.manual_seed(seed)
    spec, model = load_choice(choice_dir)
    models = latency_models(exp)
    costs, compressors = arch_costs(spec, models), cut_compressors(exp, spec.dims)
    if datamodule is not None:
        datamodule.setup()
    dm = datamodule if datamodule is not None else build_datamodule(exp)
    return _Choice(exp, choice_dir, spec, model, dm, models, costs, compressors, seed, device)


def _fit_compressors(ch: _Choice, plan: DeploymentPlan,
                     segments: list[nn.Module]) -> tuple[LearnedCodecs, DeploymentPlan]:
    """Learned compressors trained at their cuts; every cut's compressor calibrated on what crosses it."""
    part = ch.exp.config.partition
    given = list(part.compressors) if part is not None else []
    epochs = (part.train_epochs, part.finetune_epochs) if part is not None else (1, 0)
    try:
        learned = fit_learned(segments, plan, ch.spec.input_shape, given, ch.model, ch.train_x, epochs, ch.device)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (plan: {' -> '.join(plan.devices)}, boundaries {plan.boundaries()})",
                          file=ch.exp.path, field=exc.field) from None
    plan = calibrate_plan(plan, learned.segments, ch.calib)
    if learned.params:
        plan = plan.with_compressor_params([learned.params.get(k, c.compressor_params)
                                            for k, c in enumerate(plan.cuts)])
    return learned, plan


def _price_codecs(ch: _Choice, plan: DeploymentPlan, segments: list[nn.Module],
                  learned: LearnedCodecs) -> DeploymentPlan:
    """The learned compressors' own layers priced on their devices (``compress.pricing``) and added to the plan."""
    if not learned.codecs:
        return plan
    extra = codec_compute_ms(plan, codec_ops(plan, segments, learned.codecs, ch.calib[0]), ch.models)
    for k, (enc, dec) in sorted(extra.items()):
        cut = plan.cuts[k]
        learned.notes.append(f"{cut.compressor} at {cut.src} -> {cut.dst}: its encoder adds {enc:.4g} ms on {cut.src}, "
                             f"its decoder {dec:.4g} ms on {cut.dst} (in the plan's latency)")
    return with_codec_compute(plan, extra)


def _record(ch: _Choice, plan: DeploymentPlan, segments: list[nn.Module], learned: LearnedCodecs, model: nn.Module,
            exits: ExitsResult | None) -> DeployRecord:
    """Accuracy split vs unsplit on the test split, and the baselines under the same latency models."""
    ch.test = list(ch.dm.test_dataloader())
    acc_split = accuracy(SplitPipeline(segments, plan, learned.codecs), ch.test)
    acc_full = accuracy(model, ch.test)
    part = ch.exp.config.partition
    sweep = (payload_sweep(plan, segments, learned.codecs, ch.test, ch.calib, acc_split)
             if plan.cuts and (part is None or part.payload_sweep) else None)
    return DeployRecord(
        arch=ch.spec.compact(), plan=PLAN_JSON, predicted_latency_ms=plan.total_latency_ms, devices=plan.devices,
        boundaries=plan.boundaries(),
        cuts=[CutRecord(src=c.src, dst=c.dst, compressor=c.compressor, payload_bytes=c.payload_bytes,
                        link_ms=c.link_ms) for c in plan.cuts],
        mean_latency_ms=plan.mean_latency_ms, input_bytes=ch.costs.input_bytes, test_acc_unsplit=acc_full,
        test_acc_split=acc_split, acc_change_pp=100 * (acc_split - acc_full), notes=learned.notes,
        baselines=[b.to_dict() for b in baselines(ch.spec, ch.exp.search_space, ch.exp.topology, ch.models)],
        exits=_exits_summary(exits, plan) if exits is not None else None, payload_sweep=sweep)


def _export(ch: _Choice, plan: DeploymentPlan, segments: list[nn.Module], learned: LearnedCodecs, model: nn.Module,
            exits: ExitsResult | None, record: DeployRecord) -> DeployRecord:
    """``bundle/`` written, verified against the unsplit model and timed on this machine, as configured."""
    cfg, bundle, test = ch.exp.config.export, ch.dir / BUNDLE_DIR, ch.test
    heads = exit_heads_by_device(exits, plan) if exits is not None and exits.exits else None
    pred = None if ch.predictor is None else (ch.predictor.predictor, ch.predictor.gammas)
    export_bundle(segments, plan, ch.calib[0], bundle, codecs=learned.codecs, exits=heads, predictor=pred,
                  adaptive=ch.adaptive)
    update: dict = {"bundle": BUNDLE_DIR}
    if cfg.verify:
        update["verify"] = verify_parts(bundle, model, test[:4],
                                        lossless=all(COMPRESSORS[c.compressor].lossless for c in plan.cuts))
        if heads:
            cascade = exits.net if pred is None else SkippingCascade(exits.net, *pred)
            update["verify"]["exits"] = verify_exit_decisions(bundle, cascade, test[:4])
    if cfg.measure:
        update["latency_measured"] = measure_parts(bundle, plan, test[0][0], profile_metas(ch.exp))
    return record.model_copy(update=update)


def _t_const(exp: Experiment, choice_dir: Path, t_const_ms: float | None) -> float:
    if t_const_ms is not None:
        return t_const_ms
    outcome = choice_dir / "outcome.json"
    return float(Outcome.load(outcome).t_const_ms if outcome.is_file() else exp.config.strategy.t_const_ms)


def _split_with_exits(exp: Experiment, plan: DeploymentPlan, spec: ArchSpec, model: nn.Module, dm: JmsnasDataModule,
                      costs, compressors: Sequence[Compressor], seed: int, t_const_ms: float, device: torch.device):
    """The split to put exits on: paper 001 maps the network onto the devices together with its exits.

    The latency-optimal split without exits often runs everything on one device and leaves no inner
    boundary for an exit. So ``augment`` first enumerates every split with its exits (links priced
    with the experiment's compressors, payloads estimated); when its choice has exits, that split
    becomes the plan, with those compressors. Returns the plan and the heads trained for it (reused
    by the second, exact pass).
    """
    cfg = exp.config
    log.info(f"exits       enumerating splits with exits on {' -> '.join(plan.devices)}, T_const {t_const_ms:g} ms ...")
    first = augment(model, dm, cfg.exits, exp.topology, ExitLatency(models=latency_models(exp), spec=spec),
                    t_const_ms=t_const_ms, seed=seed, compressors=compressors, device=device)
    p = first.placement
    heads = None if cfg.exits.joint_finetune else first.heads  # fine-tuned heads belong to a fine-tuned backbone
    if not first.exits or (tuple(p.path) == tuple(plan.devices) and tuple(p.boundaries) == tuple(plan.boundaries())):
        return plan, heads or None
    return plan_fixed(costs.latency_ms, costs.output_bytes, costs.input_bytes, exp.topology, p.path, p.boundaries,
                      compressors), heads


def _exits(exp: Experiment, choice_dir: Path, plan: DeploymentPlan, spec: ArchSpec, model: nn.Module,
           dm: JmsnasDataModule, calib: Sequence[torch.Tensor], seed: int, t_const_ms: float,
           trained_heads: dict | None, device: torch.device):
    """Early exits at the plan's device boundaries (``exits.augment``); the plan re-evaluated with them.

    Returns:
        The ``ExitsResult``, the plan with its exits, the segments of the backbone (fine-tuned with
        the exits if that was kept) and that backbone.
    """
    cfg = exp.config
    log.info(f"exits       {choice_dir.name}: heads at the boundaries {plan.boundaries()[1:-1]} of "
             f"{' -> '.join(plan.devices)}, T_const {t_const_ms:g} ms ...")
    result = augment(model, dm, cfg.exits, exp.topology, ExitLatency(models=latency_models(exp), spec=spec),
                     t_const_ms=t_const_ms, split=plan, run_dir=choice_dir / EXITS_DIR, seed=seed,
                     trained_heads=trained_heads, device=device)
    backbone = result.graph.model.eval()
    segments = list(split_archnet(backbone, plan.boundaries()))
    if backbone is not model:  # fine-tuned with the exits: the quantisers' ranges are measured again
        plan = calibrate_plan(plan, segments, calib)
    return result, plan_with_exits(result, exp.topology.kind, base_plan=plan), segments, backbone


def _exits_summary(result: ExitsResult, plan: DeploymentPlan) -> ExitsSummary:
    test = result.test
    return ExitsSummary(dir=EXITS_DIR, units=result.exits, thresholds=result.thresholds,
                        devices=[e.device for e in plan.exits], test_acc=test.accuracy,
                        acc_change_pp=-test.accuracy_loss_pp, mac_reduction=test.mac_reduction,
                        mean_latency_ms=test.mean_latency_ms, worst_latency_ms=test.worst_latency_ms,
                        termination=[r["termination"] for r in test.exits])


def _with_real_payloads(plan: DeploymentPlan, segments, codecs, x: torch.Tensor, exp: Experiment) -> DeploymentPlan:
    """The plan with the bytes each cut really sends and the latency they give (estimates replaced)."""
    cuts, values = [], (x,)
    parts = device_parts(plan, segments, codecs)
    with torch.no_grad():
        for k, cut in enumerate(plan.cuts):
            values = parts[k](*values)
            payload = float(sum(tensor_bytes(v) for v in values))
            cuts.append(replace(cut, payload_bytes=payload, link_ms=exp.topology.link(cut.src, cut.dst)
                                .latency_ms(payload)))
    segs = list(plan.segments)
    if plan.cuts and COMPRESSORS[plan.cuts[0].compressor].first_cut_only:  # a student head replaced the layers
        p = plan.cuts[0].compressor_params
        scale = p["student_macs"] / max(1, p["teacher_head_macs"])
        segs[0] = replace(segs[0], compute_ms=segs[0].compute_ms * scale)
    return replace(plan, segments=tuple(segs), cuts=tuple(cuts), total_latency_ms=sequential_latency_ms(segs, cuts))


def deploy_run(exp: Experiment, run_dir: Path, summary: Summary) -> list[dict]:
    """`deploy_choice` for every feasible choice of a finished search; append the section to ``report.md``.

    Returns:
        Per deployed choice, its ``deploy.json`` with ``t_const_ms`` and ``dir`` (the choice folder).
    """
    done = []
    for sel in summary.selections:
        if not sel.feasible or sel.best_dir is None:
            continue
        choice = run_dir / sel.best_dir
        if (choice / DEPLOY_JSON).is_file():
            record = DeployRecord.load(choice / DEPLOY_JSON)
        else:
            log.info(f"deploy      {sel.best_dir}: plan, compress, export ...")
            record = deploy_choice(exp, choice, t_const_ms=sel.t_const_ms)
        done.append({"t_const_ms": sel.t_const_ms, "dir": sel.best_dir, **record.to_dict()})
    report, plots = run_dir / "report.md", {}
    if done:
        data = summary.to_json()
        if data["plots"].get("pareto"):  # the search drew it; redrawn with the baselines beside the trials
            plot_pareto(run_dir / data["plots"]["pareto"], data["trials"], data["selections"], done)
        plots = write_deploy_plots(run_dir, done)
    if done and report.is_file():
        write_deployment_section(report, done, plots)
    return done
