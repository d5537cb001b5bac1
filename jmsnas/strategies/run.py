"""One search run of the supernet strategy: stage 1 (search), derivation, stage 2 (retrain), test.

`run_proxyless` is what a Tune trial (or a benchmark) calls: everything is built from the
experiment and the strategy config, and everything it writes goes under ``run_dir``:
``search/`` (Lightning logs and the last checkpoint), ``derivation.json`` (the networks the trained
supernet scored and the one handed on, `jmsnas.strategies.derive`), ``arch.json``, ``retrain/`` and
``model.pt`` (the retrained weights, a plain state dict).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from jmsnas.builders import cut_compressors, latency_models
from jmsnas.config import Experiment, MorphismConfig, ProxylessConfig, RandomConfig, TrainerConfig
from jmsnas.data import JmsnasDataModule
from jmsnas.io import write_json
from jmsnas.space.arch import ArchSpec, build_model
from jmsnas.space.branched import BranchedArchSpec, build_branched
from jmsnas.space.supernet import Supernet
from jmsnas.strategies.derive import derive
from jmsnas.strategies.expected_latency import ExpectedLatency, LatencyPenalty
from jmsnas.strategies.proxyless import SupernetSearch
from jmsnas.strategies.records import Outcome
from jmsnas.strategies.retrain import Classifier, accuracy


@dataclass
class SearchOutcome:
    """What one search run found and how well it does.

    ``search_val_acc`` is the chosen network's validation accuracy with its weights from the search (the
    supernet strategy's: inherited from the supernet, BatchNorm statistics re-estimated for it), before
    retraining; ``val_acc`` and ``test_acc`` are after retraining. ``outcome.json`` holds the same
    fields (`jmsnas.strategies.records.Outcome`).
    """

    arch: dict
    compact: str
    t_const_ms: float
    predicted_latency_ms: float
    feasible: bool
    split: dict
    search_val_acc: float
    val_acc: float
    test_acc: float
    search_wall_s: float
    retrain_wall_s: float
    seed: int


def expected_latency(exp: Experiment, num_classes: int, input_shape: tuple[int, ...],
                     strategy: ProxylessConfig) -> ExpectedLatency:
    """The E[T] predictor for an experiment's topology, devices and search space (eq. (2) for a branched space)."""
    models = latency_models(exp)
    if exp.search_space.is_branched:
        from jmsnas.strategies.branched_latency import BranchedExpectedLatency

        return BranchedExpectedLatency(exp.search_space, exp.topology, models, num_classes, input_shape)
    cap = strategy.max_layers_per_device if strategy.split == "pinned" else None
    return ExpectedLatency(exp.search_space, exp.topology, models, num_classes, input_shape, cap,
                           cut_compressors(exp, exp.search_space.dims))


def _trainer(run_dir: Path, name: str, epochs: int, progress: bool, hw: TrainerConfig, hparams: dict,
             **kwargs) -> pl.Trainer:
    """A Trainer on the experiment's accelerator / devices / precision (``hw``, the ``trainer`` section).

    It logs to ``run_dir/name/metrics.csv`` (and with ``logger: tensorboard`` to ``run_dir/name/tensorboard/``)
    and records ``hparams`` (``hparams.yaml``, TensorBoard's hyper-parameters).
    """
    loggers = [pl.loggers.CSVLogger(run_dir, name=name, version="")]
    if hw.logger == "tensorboard":
        loggers.append(pl.loggers.TensorBoardLogger(run_dir / name, name="tensorboard", version="",
                                                    default_hp_metric=False))
    trainer = pl.Trainer(max_epochs=epochs, **hw.kwargs(), default_root_dir=run_dir / name, logger=loggers,
                         enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)
    for lg in trainer.loggers:
        lg.log_hyperparams({**hparams, "trainer": hw.model_dump(mode="json")})
    return trainer


def run_proxyless(exp: Experiment, strategy: ProxylessConfig, seed: int, run_dir: Path, *,
                  datamodule: JmsnasDataModule | None = None, progress: bool = True,
                  callbacks: list | None = None, ckpt_path: str | None = None) -> SearchOutcome:
    """Search, derive, retrain and test one network; write its artifacts under ``run_dir``.

    Args:
        exp: the loaded experiment.
        strategy: the supernet strategy's parameters (a trial may override the experiment's).
        seed: seed of weights, sampling and data order.
        run_dir: where this run writes.
        datamodule: the data (built from the experiment when omitted).
        progress: show Lightning's progress bars.
        callbacks: extra Lightning callbacks of the search Trainer (a Tune trial reports through one).
        ckpt_path: a search checkpoint to continue from (an interrupted trial).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = datamodule or JmsnasDataModule(exp.config.dataset, seed=exp.config.seed)
    info = dm.info()
    supernet = Supernet(exp.search_space, info.num_classes, info.input_shape, strategy.weight_sharing)
    predictor = expected_latency(exp, info.num_classes, info.input_shape, strategy)
    penalty = LatencyPenalty(strategy.lambda2, strategy.t_const_ms, one_sided=strategy.penalty == "one_sided")
    system = SupernetSearch(supernet, predictor, penalty, weight_lr=strategy.weight_lr, arch_lr=strategy.arch_lr,
                            weight_decay=strategy.lambda1, warmup_epochs=strategy.warmup_epochs,
                            epochs=strategy.epochs, seed=seed, bn_calibration_batches=strategy.bn_calibration_batches,
                            train_derived=strategy.train_derived)
    start = time.perf_counter()
    trainer = _trainer(run_dir, "search", strategy.epochs, progress, exp.config.trainer, callbacks=callbacks,
                       hparams={"seed": seed, "strategy": strategy.model_dump(mode="json")})
    trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)
    search_wall = time.perf_counter() - start

    derivation = derive(system, predictor, strategy.t_const_ms, strategy.derive_candidates, seed,
                        dm.val_dataloader(), dm.test_dataloader())
    write_json(run_dir / "derivation.json", derivation.to_dict(), newline=True)
    paths = derivation.paths
    spec = supernet.to_arch_spec(paths=paths)
    spec.save_json(run_dir / "arch.json")
    estimate = predictor.for_choices(paths)
    net = system.derived_network(paths)  # the supernet's weights, BatchNorm statistics of this network
    search_val_acc = accuracy(net, dm.val_dataloader())
    net.train()
    if strategy.retrain.init == "scratch":
        pl.seed_everything(seed, workers=True, verbose=False)
        net = build_branched(spec) if isinstance(spec, BranchedArchSpec) else build_model(spec)
    split = {"path": list(estimate.path), "boundaries": list(estimate.boundaries), "device_ms": estimate.device_ms,
             "link_ms": estimate.link_ms}
    return retrain_and_record(net, spec, dm, strategy, run_dir, progress, predicted_ms=float(estimate.total_ms),
                              split=split, search_val_acc=search_val_acc, search_wall_s=search_wall, seed=seed,
                              hw=exp.config.trainer)


def retrain_and_record(net: torch.nn.Module, spec: ArchSpec, dm: JmsnasDataModule,
                       strategy: ProxylessConfig | MorphismConfig | RandomConfig, run_dir: Path, progress: bool, *,
                       predicted_ms: float, split: dict, search_val_acc: float, search_wall_s: float,
                       seed: int, hw: TrainerConfig) -> SearchOutcome:
    """Stage 2 of every strategy and its record: retrain ``net`` on ``hw``, write ``model.pt``, ``outcome.json``."""
    start = time.perf_counter()
    val_acc, test_acc = retrain(net, dm, strategy, run_dir, progress, hw)
    retrain_wall = time.perf_counter() - start
    torch.save(net.state_dict(), run_dir / "model.pt")
    outcome = SearchOutcome(
        arch=spec.to_dict(), compact=spec.compact(), t_const_ms=strategy.t_const_ms,
        predicted_latency_ms=float(predicted_ms), feasible=float(predicted_ms) <= strategy.t_const_ms, split=split,
        search_val_acc=float(search_val_acc), val_acc=val_acc, test_acc=test_acc,
        search_wall_s=float(search_wall_s), retrain_wall_s=retrain_wall, seed=seed)
    Outcome.of(asdict(outcome)).write(run_dir / "outcome.json")
    return outcome


def retrain(net: torch.nn.Module, dm: JmsnasDataModule, strategy: ProxylessConfig | MorphismConfig | RandomConfig,
            run_dir: Path, progress: bool, hw: TrainerConfig) -> tuple[float, float]:
    """Stage 2: train ``net`` alone (on ``hw``); return (validation accuracy, test accuracy)."""
    cfg = strategy.retrain
    system = Classifier(net, lr=cfg.lr, weight_decay=strategy.lambda1, epochs=cfg.epochs)
    hparams = {"retrain": cfg.model_dump(mode="json"), "weight_decay": strategy.lambda1, "strategy": strategy.name}
    trainer = _trainer(run_dir, "retrain", cfg.epochs, progress, hw, hparams, enable_checkpointing=False)
    trainer.fit(system, datamodule=dm)
    val_acc = float(trainer.callback_metrics["val_acc"])
    test_acc = float(trainer.test(system, datamodule=dm, verbose=False)[0]["test_acc"])
    return val_acc, test_acc
