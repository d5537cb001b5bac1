"""Paper 000 §III-C: knowledge-distillation-guided network-morphism hill climbing.

Elsken et al.'s NASH hill climbing, as paper 000 changes it: children are trained on a teacher's
softened labels and judged by the softened validation loss (`jmsnas.strategies.children`).

1. The start network is small: the search space's stem and head with one ``start_op`` layer per
   stage (the stage's stride, ``start_width`` of its width). It is trained like a child.
2. Each iteration makes ``children`` children, each the parent changed by ``morphs_per_child``
   random function-preserving morphisms (`jmsnas.space.morph`). A child whose predicted latency
   on the experiment's topology breaks T_const, or that fits no placement in the devices' memory,
   is dropped untrained (`jmsnas.strategies.arch_latency`); up to ten draws per wanted child.
3. The children are trained (``child_epochs``, cosine) and scored, in parallel when a ``runner``
   is given (Ray tasks under Tune); the best replaces the parent if its score is lower
   (`accepted_child`). With ``acceptance: fair`` (the default) the parent is trained for the same
   ``child_epochs`` beside its children, as NASH does, and that new score is the one to beat: a child
   is accepted for its architecture, not for the extra training it got. When none beats it, the
   parent goes on with its extra training. ``acceptance: paper`` is paper 000's rule: the parent's
   score from when it was accepted, although every child has trained ``child_epochs`` longer.
4. After ``iterations`` (few, so the network stays small, as paper 000 does), the parent is the
   result: ``arch.json``, retrained on hard labels (paper 000: from scratch) and tested exactly
   like the supernet strategy's network, with the same ``outcome.json``.

Resume: the teacher is cached in the run directory (`jmsnas.strategies.teacher`); after the start
network and after every iteration, ``climb/state.json`` (iteration, parent, scores, history) and the
parent's weights are written atomically, so a restarted run continues with the next iteration. An
iteration's random draws depend only on (seed, iteration), so a repeated iteration makes the same children.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from jmsnas.config import Experiment, MorphismConfig
from jmsnas.data import JmsnasDataModule
from jmsnas.errors import ConfigError
from jmsnas.io import atomic_write
from jmsnas.space.arch import ArchNet, ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model
from jmsnas.space.candidates import CANDIDATES
from jmsnas.space.morph import random_morphism
from jmsnas.space.spec import SearchSpace
from jmsnas.strategies.arch_latency import ArchLatencyModel, DoesNotFit
from jmsnas.strategies.children import ChildData, ChildJob, ChildResult, WithTeacher, fit, train_child
from jmsnas.strategies.records import ClimbRecord, ClimbState
from jmsnas.strategies.run import SearchOutcome, retrain_and_record
from jmsnas.strategies.teacher import load_or_train_teacher, teacher_logits

Runner = Callable[[Callable[[Any, Any], Any], Any, Sequence[Any]], list]
"""``runner(fn, shared, items) -> [fn(shared, item) for item in items]``, possibly in parallel."""
Report = Callable[[dict], None]
#: Draws of random children per child wanted, before the iteration goes on with fewer.
DRAWS_PER_CHILD = 10


def sequential_runner(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list:
    """Run the children one after another in this process."""
    return [fn(shared, item) for item in items]


def start_spec(space: SearchSpace, num_classes: int, input_shape: tuple[int, ...], width: float,
               op: str) -> ArchSpec:
    """The small start network: stem, one ``op`` layer per stage (its stride, ``width`` of its channels), head."""
    cfg = space.config
    blocks, channels = [], cfg.stem.channels
    for stage in cfg.stages:
        out = max(1, round(stage.channels * width))
        blocks.append(BlockSpec.of(op, channels, out, stage.stride))
        channels = out
    return ArchSpec(dims=cfg.dims, input_shape=space.resolve_input_shape(input_shape), num_classes=num_classes,
                    stem=StemSpec(**cfg.stem.model_dump()), blocks=tuple(blocks),
                    head=HeadSpec(**cfg.head.model_dump()))


def deepen_ops(space: SearchSpace) -> list[str]:
    """The shortcut MBConvs of the search space: what ``deepen`` may insert (``mb_k3_e3_sc`` if it lists none)."""
    ops = [n for n in space.config.candidates if CANDIDATES[n].kind == "mbconv" and CANDIDATES[n].shortcut]
    return ops or ["mb_k3_e3_sc"]


# --- state ---------------------------------------------------------------------------------------


def save_state(state_dir: Path, state: dict, net: ArchNet) -> None:
    """Write the parent's weights, then ``state.json`` naming them (both atomically), then drop older weights."""
    state_dir.mkdir(parents=True, exist_ok=True)
    weights = f"parent-{state['iteration']}.pt"
    atomic_write(state_dir / weights, lambda p: torch.save(net.state_dict(), p))
    ClimbState.of({**state, "weights": weights}).write(state_dir / "state.json")
    for old in state_dir.glob("parent-*.pt"):
        if old.name != weights:
            old.unlink()


def load_state(state_dir: Path) -> tuple[dict, ArchSpec, ArchNet] | None:
    """The saved climb, or None when there is none.

    Raises:
        JmsnasError: ``state.json`` is not a climb state (naming the field).
    """
    path = state_dir / "state.json"
    if not path.is_file():
        return None
    state = ClimbState.load(path)
    spec = ArchSpec.from_dict(state.arch, file=path)
    net = build_model(spec)
    net.load_state_dict(torch.load(state_dir / state.weights, map_location="cpu", weights_only=True))
    return state.data(), spec, net


# --- the climb -----------------------------------------------------------------------------------


def _draw_children(spec: ArchSpec, net: ArchNet, strategy: MorphismConfig, latency: ArchLatencyModel,
                   ops: Sequence[str], seed: int, iteration: int) -> tuple[list[tuple], dict[str, int]]:
    """Up to ``children`` feasible children: ``(spec, net, morphs, latency_ms)``; and how many were dropped, why."""
    rng = random.Random(f"{seed}/{iteration}")
    found, dropped = [], {"latency": 0, "memory": 0}
    for draw in range(strategy.children * DRAWS_PER_CHILD):
        if len(found) == strategy.children:
            break
        torch.manual_seed(rng.randrange(2**31) + draw)  # fresh weights of new layers
        child_spec, child, morphs = spec, net, []
        for _ in range(strategy.morphs_per_child):
            child_spec, child, what = random_morphism(child_spec, child, rng, ops)
            morphs.append(what)
        try:
            ms = latency(child_spec).latency_ms
        except DoesNotFit:
            dropped["memory"] += 1
            continue
        if ms > strategy.t_const_ms:
            dropped["latency"] += 1
            continue
        found.append((child_spec, child, morphs, ms))
    return found, dropped


def _metrics(state: dict, t_const_ms: float, **extra: Any) -> dict:
    return {"epoch": state["iteration"], "iteration": state["iteration"], "val_acc": state["val_acc"],
            "val_score": state["score"], "expected_latency_ms": state["latency_ms"],
            "derived_latency_ms": state["latency_ms"], "feasible": float(state["latency_ms"] <= t_const_ms),
            "retrained": 0, **extra}


def accepted_child(child_scores: Sequence[float], parent_score: float,
                   trained_parent_score: float | None = None) -> int | None:
    """The child that replaces the parent, or None: the lowest score, when strictly below the bar.

    Args:
        child_scores: each child's score after its ``child_epochs`` (lower is better).
        parent_score: the parent's score from when it was accepted (paper 000's bar).
        trained_parent_score: the parent's score after the same ``child_epochs`` of extra training; given,
            it is the bar (NASH's fair comparison), else ``parent_score`` is.
    """
    bar = parent_score if trained_parent_score is None else trained_parent_score
    best = min(range(len(child_scores)), key=lambda k: child_scores[k], default=None)
    return best if best is not None and child_scores[best] < bar else None


def _train_generation(spec: ArchSpec, net: ArchNet, children: list[tuple], data: ChildData, seed: int,
                      iteration: int, strategy: MorphismConfig,
                      runner: Runner) -> tuple[list[ChildResult], ChildResult | None]:
    """Train the children, and the parent beside them under the fair rule; ``(children's results, parent's)``."""
    base = seed * 10_007 + iteration * 101
    jobs = [ChildJob(k, s.to_dict(), n.state_dict(), base + k) for k, (s, n, _, _) in enumerate(children)]
    fair = strategy.acceptance == "fair" and bool(children)
    if fair:  # the parent as one more competitor; its seed differs from every child's
        jobs.append(ChildJob(len(children), spec.to_dict(), net.state_dict(), base + strategy.children))
    results: list[ChildResult] = runner(train_child, data, jobs) if jobs else []
    return (results[:-1], results[-1]) if fair else (results, None)


def hill_climb(start: ArchSpec, data: ChildData, strategy: MorphismConfig, seed: int, latency: ArchLatencyModel,
               ops: Sequence[str], state_dir: Path, *, runner: Runner = sequential_runner,
               report: Report | None = None,
               log: Callable[[str], None] | None = None) -> tuple[ArchSpec, ArchNet, dict]:
    """Run (or continue) the hill climbing; returns the final parent's spec, network and the climb's state."""
    loaded = load_state(state_dir)
    if loaded is None:
        t0 = time.perf_counter()
        pl.seed_everything(seed, workers=True, verbose=False)
        spec, net = start, build_model(start)
        score, val_acc = fit(net, data, seed)
        state = {"iteration": 0, "arch": spec.to_dict(), "compact": spec.compact(), "score": score,
                 "val_acc": val_acc, "latency_ms": latency(spec).latency_ms, "wall_s": 0.0,
                 "history": [{"iteration": 0, "start": spec.compact(), "score": score, "val_acc": val_acc}]}
        state["wall_s"] = time.perf_counter() - t0
        save_state(state_dir, state, net)
        if report:
            report(_metrics(state, strategy.t_const_ms, children_trained=0, accepted=1))
    else:
        state, spec, net = loaded
    while state["iteration"] < strategy.iterations:
        t0 = time.perf_counter()
        iteration = state["iteration"] + 1
        children, dropped = _draw_children(spec, net, strategy, latency, ops, seed, iteration)
        results, parent = _train_generation(spec, net, children, data, seed, iteration, strategy, runner)
        pick = accepted_child([r.score for r in results], state["score"], parent and parent.score)
        accepted = pick is not None
        record = {"iteration": iteration, "accepted": pick, "dropped": dropped, "pid": os.getpid(),
                  "acceptance": strategy.acceptance, "parent_score_before": state["score"],
                  "parent": None if parent is None else {"score": parent.score, "val_acc": parent.val_acc,
                                                         "wall_s": parent.wall_s, "pid": parent.pid},
                  "children": [{"morphs": c[2], "compact": c[0].compact(), "latency_ms": c[3], "score": r.score,
                                "val_acc": r.val_acc, "wall_s": r.wall_s, "pid": r.pid}
                               for c, r in zip(children, results, strict=True)]}
        winner = results[pick] if accepted else parent
        if winner is not None:  # the accepted child, or the parent with its extra training
            if accepted:
                spec = children[pick][0]
                state.update(arch=spec.to_dict(), compact=spec.compact(), latency_ms=children[pick][3])
            net = build_model(spec)
            net.load_state_dict(winner.state)
            state.update(score=winner.score, val_acc=winner.val_acc)
        state["history"].append(record)
        state["iteration"] = iteration
        state["wall_s"] += time.perf_counter() - t0
        save_state(state_dir, state, net)
        if log:
            log(f"iteration {iteration}: {len(results)} children trained, {sum(dropped.values())} dropped "
                f"({dropped}); {'accepted' if accepted else 'kept the parent'}: {state['compact']} score "
                f"{state['score']:.4f}, val acc {state['val_acc']:.3f}, {state['latency_ms']:.3g} ms")
        if report:
            report(_metrics(state, strategy.t_const_ms, children_trained=len(results), accepted=int(accepted)))
    return spec, net, state


# --- one run ------------------------------------------------------------------------------------


def child_data(exp: Experiment, strategy: MorphismConfig, dm: JmsnasDataModule, teacher_dir: Path,
               progress: bool) -> tuple[ChildData, dict | None]:
    """The children's data (with the teacher's logits when ``use_kd``) and the teacher's record."""
    dm.setup()
    train, val, record = dm.train_set, dm.val_set, None
    if strategy.use_kd:
        teacher, record = load_or_train_teacher(exp, strategy, dm, teacher_dir, seed=exp.config.seed,
                                                progress=progress)
        train = WithTeacher(train, teacher_logits(teacher, train))
        val = WithTeacher(val, teacher_logits(teacher, val))
    return ChildData(train=train, val=val, batch_size=exp.config.dataset.batch_size, epochs=strategy.child_epochs,
                     lr=strategy.child_lr, weight_decay=strategy.lambda1, temperature=strategy.temperature,
                     kd_weight=strategy.kd_weight, use_kd=strategy.use_kd, hw=exp.config.trainer), record


def run_morphism(exp: Experiment, strategy: MorphismConfig, seed: int, run_dir: Path, *,
                 datamodule: JmsnasDataModule | None = None, progress: bool = True, runner: Runner | None = None,
                 report: Report | None = None, teacher_dir: Path | None = None) -> SearchOutcome:
    """Search by hill climbing, retrain and test one network; write its artifacts under ``run_dir``.

    Args:
        exp: the loaded experiment.
        strategy: the morphism strategy's parameters (a trial may override the experiment's).
        seed: seed of the climb's draws, the children's training and the retraining.
        run_dir: where this run writes: ``climb/`` (state, resumable), ``arch.json``, ``climb.json``,
            ``retrain/``, ``model.pt``, ``outcome.json``.
        datamodule: the data (built from the experiment when omitted).
        progress: progress bars and one line per iteration.
        runner: how children are trained (default: one after another here; Tune passes Ray tasks).
        report: called after the start network and every iteration with the parent's metrics.
        teacher_dir: where the teacher is cached; default ``run_dir / "teacher"`` (Tune: the run's).

    Raises:
        ConfigError: the start network fits no placement in the devices' memory.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = datamodule or JmsnasDataModule(exp.config.dataset, seed=exp.config.seed)
    info = dm.info()
    latency = ArchLatencyModel.for_experiment(exp)
    start = start_spec(exp.search_space, info.num_classes, info.input_shape, strategy.start_width, strategy.start_op)
    try:
        latency(start)
    except DoesNotFit as exc:
        raise ConfigError(f"the start network {start.compact()} fits no device's memory ({exc}); lower it",
                          file=exp.path, field="strategy.start_width") from None
    data, teacher = child_data(exp, strategy, dm, teacher_dir or run_dir / "teacher", progress)
    spec, net, state = hill_climb(start, data, strategy, seed, latency, deepen_ops(exp.search_space),
                                  run_dir / "climb", runner=runner or sequential_runner, report=report,
                                  log=print if progress else None)
    spec.save_json(run_dir / "arch.json")
    ClimbRecord.of({"teacher": teacher, **state}).write(run_dir / "climb.json")
    estimate = latency(spec)
    if strategy.retrain.init == "scratch":
        pl.seed_everything(seed, workers=True, verbose=False)
        net = build_model(spec)
    return retrain_and_record(net, spec, dm, strategy, run_dir, progress, predicted_ms=estimate.latency_ms,
                              split=estimate.split(), search_val_acc=state["val_acc"], search_wall_s=state["wall_s"],
                              seed=seed, hw=exp.config.trainer)
