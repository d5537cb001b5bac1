"""Latency-constrained random search: the baseline every NAS method must beat (Li & Talwalkar 2019).

Li and Talwalkar ("Random Search and Reproducibility for Neural Architecture Search", UAI 2019)
show that random architectures trained briefly and compared by validation accuracy are a strong
baseline; a search that does not beat it at the same cost has not earned its keep. Here:

1. **Sample** (cheap, nothing is trained): draw one candidate per searchable layer uniformly from
   the layer's allowed candidates and price the network on the experiment's topology with the
   planner's latency model (`jmsnas.strategies.arch_latency`, as the morphism search prices its
   children). A draw that breaks T_const, fits no placement in the devices' memory, or repeats an
   earlier network is rejected; after ``max_rejections`` rejections in a row sampling stops. No
   network fitting at all is a configuration error naming T_const and the fastest network drawn.
2. **Train** each of the ``num_candidates`` networks from scratch for ``sample_epochs`` (SGD, cosine
   from ``sample_lr``, hard labels; `jmsnas.strategies.children.fit`). With ``time_budget_s`` no
   candidate starts once that much training time is spent (the first always does), so a budgeted
   run depends on the machine's speed; without one, the same experiment and seed give the same network.
3. **Keep** the best by validation accuracy (ties: lower validation loss, then the earlier draw) and
   retrain it exactly like the other strategies (`run.retrain_and_record`): ``arch.json``,
   ``retrain/``, ``model.pt``, ``outcome.json``. ``init: scratch`` (the default, as Li and Talwalkar)
   starts from fresh weights; ``inherit`` continues from the candidate's sample training.

``random.json`` records every drawn network, the rejections and every trained candidate with its
predicted latency and validation accuracy. It is rewritten atomically after each candidate, with
the best candidate's weights (``random-best.pt``), so a restarted run continues with the next one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from jmsnas.config import Experiment, RandomConfig
from jmsnas.data import JmsnasDataModule
from jmsnas.errors import ConfigError
from jmsnas.io import atomic_write
from jmsnas.space.arch import ArchNet, ArchSpec, build_model
from jmsnas.space.spec import SearchSpace
from jmsnas.strategies.arch_latency import ArchLatencyModel, DoesNotFit
from jmsnas.strategies.children import ChildData, fit
from jmsnas.strategies.records import RandomRecord
from jmsnas.strategies.run import SearchOutcome, retrain_and_record

STATE_FILE = "random.json"
BEST_WEIGHTS = "random-best.pt"
Report = Callable[[dict], None]


class NothingFits(ValueError):
    """No drawn network fits T_const (and the devices' memory)."""


@dataclass
class Sample:
    """The networks drawn within T_const, and what was rejected on the way.

    Attributes:
        drawn: ``(spec, predicted latency ms)`` of each accepted network, in draw order.
        rejected: rejected draws by reason: ``latency``, ``memory``, ``duplicate``.
        fastest_ms: the lowest predicted latency of any draw that fit the devices' memory.
    """

    drawn: list[tuple[ArchSpec, float]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=lambda: {"latency": 0, "memory": 0, "duplicate": 0})
    fastest_ms: float | None = None


def draw_arch(space: SearchSpace, num_classes: int, input_shape: tuple[int, ...], rng: random.Random) -> ArchSpec:
    """One network of ``space``: a candidate per searchable layer, uniformly among those allowed there."""
    choices = [rng.choice(slot.candidates) for slot in space.layers(input_shape)]
    return ArchSpec.from_choices(space, choices, num_classes, input_shape)


def sample_within(space: SearchSpace, num_classes: int, input_shape: tuple[int, ...], latency: ArchLatencyModel,
                  t_const_ms: float, count: int, max_rejections: int, rng: random.Random) -> Sample:
    """Rejection-sample up to ``count`` distinct networks whose predicted latency is at most ``t_const_ms``.

    Args:
        space: the search space.
        num_classes: classifier outputs.
        input_shape: input shape without batch.
        latency: the planner's latency of one network on the topology.
        t_const_ms: the latency constraint.
        count: networks wanted.
        max_rejections: rejected draws in a row after which sampling stops with what it has.
        rng: the source of the draws.

    Raises:
        NothingFits: not one draw fitted.
    """
    sample, seen, in_a_row = Sample(), set(), 0
    while len(sample.drawn) < count and in_a_row < max_rejections:
        spec = draw_arch(space, num_classes, input_shape, rng)
        reason = "duplicate" if spec.compact() in seen else None
        if reason is None:
            try:
                ms = latency(spec).latency_ms
                sample.fastest_ms = ms if sample.fastest_ms is None else min(sample.fastest_ms, ms)
                reason = "latency" if ms > t_const_ms else None
            except DoesNotFit:
                reason = "memory"
        if reason is not None:
            sample.rejected[reason] += 1
            in_a_row += 1
            continue
        seen.add(spec.compact())
        sample.drawn.append((spec, ms))
        in_a_row = 0
    if not sample.drawn:
        fastest = ("no draw fitted the devices' memory" if sample.fastest_ms is None
                   else f"the fastest drawn network takes {sample.fastest_ms:.4g} ms")
        raise NothingFits(f"none of {max_rejections} networks drawn fits T_const {t_const_ms:g} ms: {fastest}")
    return sample


def best_candidate(trained: Sequence[dict]) -> int:
    """Index into ``trained`` of the best candidate: highest ``val_acc``, then lowest ``val_loss``, then first."""
    return min(range(len(trained)), key=lambda i: (-trained[i]["val_acc"], trained[i]["val_loss"], i))


# --- one run ------------------------------------------------------------------------------------


def _candidate_data(exp: Experiment, strategy: RandomConfig, dm: JmsnasDataModule) -> ChildData:
    dm.setup()
    return ChildData(train=dm.train_set, val=dm.val_set, batch_size=exp.config.dataset.batch_size,
                     epochs=strategy.sample_epochs, lr=strategy.sample_lr, weight_decay=strategy.lambda1,
                     temperature=1.0, kd_weight=0.0, use_kd=False, hw=exp.config.trainer)


def _initial_state(exp: Experiment, strategy: RandomConfig, seed: int, num_classes: int,
                   input_shape: tuple[int, ...]) -> dict:
    """Draw the candidates; the state ``random.json`` holds before any is trained."""
    latency = ArchLatencyModel.for_experiment(exp)
    rng = random.Random(f"{seed}/random")
    try:
        sample = sample_within(exp.search_space, num_classes, input_shape, latency, strategy.t_const_ms,
                               strategy.num_candidates, strategy.max_rejections, rng)
    except NothingFits as exc:
        raise ConfigError(f"{exc}; raise t_const_ms (or max_rejections)", file=exp.path,
                          field="strategy.t_const_ms") from None
    return {"seed": seed, "t_const_ms": strategy.t_const_ms, "rejected": sample.rejected,
            "fastest_drawn_ms": sample.fastest_ms,
            "drawn": [{"arch": s.to_dict(), "compact": s.compact(), "latency_ms": ms} for s, ms in sample.drawn],
            "trained": [], "best": None, "stopped": None, "wall_s": 0.0}


def _train_candidate(state: dict, k: int, data: ChildData, seed: int) -> tuple[dict, ArchNet]:
    drawn = state["drawn"][k]
    cand_seed = seed * 10_007 + k
    torch.manual_seed(cand_seed)
    net = build_model(ArchSpec.from_dict(drawn["arch"]))
    start = time.perf_counter()
    val_loss, val_acc = fit(net, data, cand_seed)
    record = {"index": k, "compact": drawn["compact"], "latency_ms": drawn["latency_ms"], "val_acc": val_acc,
              "val_loss": val_loss, "wall_s": time.perf_counter() - start}
    return record, net


def _metrics(state: dict, t_const_ms: float) -> dict:
    best = state["trained"][state["best"]]
    return {"epoch": len(state["trained"]), "val_acc": best["val_acc"], "val_loss": best["val_loss"],
            "expected_latency_ms": best["latency_ms"], "derived_latency_ms": best["latency_ms"],
            "feasible": float(best["latency_ms"] <= t_const_ms), "retrained": 0}


def train_candidates(state: dict, data: ChildData, strategy: RandomConfig, seed: int, run_dir: Path, *,
                     report: Report | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train the drawn candidates not trained yet, within the time budget; save the state after each."""
    state["stopped"] = None
    for k in range(len(state["trained"]), len(state["drawn"])):
        if state["trained"] and strategy.time_budget_s is not None and state["wall_s"] >= strategy.time_budget_s:
            state["stopped"] = f"time budget of {strategy.time_budget_s:g} s spent"
            break
        record, net = _train_candidate(state, k, data, seed)
        state["trained"].append(record)
        state["wall_s"] += record["wall_s"]
        best = best_candidate(state["trained"])
        if best == len(state["trained"]) - 1:
            atomic_write(run_dir / BEST_WEIGHTS, lambda p, n=net: torch.save(n.state_dict(), p))
        state["best"] = best
        RandomRecord.of(state).write(run_dir / STATE_FILE)
        if log:
            log(f"candidate {k + 1}/{len(state['drawn'])}: {record['compact']} {record['latency_ms']:.3g} ms, "
                f"val acc {record['val_acc']:.3f}")
        if report:
            report(_metrics(state, strategy.t_const_ms))
    RandomRecord.of(state).write(run_dir / STATE_FILE)
    return state


def run_random(exp: Experiment, strategy: RandomConfig, seed: int, run_dir: Path, *,
               datamodule: JmsnasDataModule | None = None, progress: bool = True,
               report: Report | None = None) -> SearchOutcome:
    """Sample, train and compare networks within T_const; retrain and test the best; write its artifacts.

    Args:
        exp: the loaded experiment.
        strategy: the random strategy's parameters (a trial may override the experiment's).
        seed: seed of the draws, the candidates' training and the retraining.
        run_dir: where this run writes: ``random.json``, ``random-best.pt``, ``arch.json``, ``retrain/``,
            ``model.pt``, ``outcome.json``.
        datamodule: the data (built from the experiment when omitted).
        progress: progress bars and one line per candidate.
        report: called after every candidate with the best candidate's metrics.

    Raises:
        ConfigError: no drawn network fits T_const.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = datamodule or JmsnasDataModule(exp.config.dataset, seed=exp.config.seed)
    info = dm.info()
    path = run_dir / STATE_FILE
    state = (RandomRecord.load(path).data() if path.is_file()
             else _initial_state(exp, strategy, seed, info.num_classes, info.input_shape))
    state = train_candidates(state, _candidate_data(exp, strategy, dm), strategy, seed, run_dir, report=report,
                             log=print if progress else None)
    best = state["trained"][state["best"]]
    spec = ArchSpec.from_dict(state["drawn"][best["index"]]["arch"])
    spec.save_json(run_dir / "arch.json")
    if strategy.retrain.init == "scratch":
        pl.seed_everything(seed, workers=True, verbose=False)
    net = build_model(spec)
    if strategy.retrain.init == "inherit":
        net.load_state_dict(torch.load(run_dir / BEST_WEIGHTS, map_location="cpu", weights_only=True))
    estimate = ArchLatencyModel.for_experiment(exp)(spec)
    return retrain_and_record(net, spec, dm, strategy, run_dir, progress, predicted_ms=estimate.latency_ms,
                              split=estimate.split(), search_val_acc=best["val_acc"], search_wall_s=state["wall_s"],
                              seed=seed, hw=exp.config.trainer)
