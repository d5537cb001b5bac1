"""A search's trials and its run directory, without Ray (`jmsnas.tune` runs the trials).

What the trials are: `trial_strategy` applies one trial's grid values to the experiment's strategy,
`smoke_config` shortens a run for ``--smoke`` (each strategy's part from `STRATEGIES`), and
`check_search` refuses a tune section the search cannot run before Ray starts.

Layout of ``runs/<name>/``: ``experiment.yaml`` (the resolved experiment, frozen at the start),
``run.json`` (`RunInfo`: how the run was started and resumed), ``tune/search/`` (Tune's results and
checkpoints), ``trials/<trial_id>/`` (each trial's Lightning logs and artifacts, ``trial.json``:
`TrialRecord`; ``outcome.json``: `jmsnas.strategies.records.Outcome`), ``best/t<T>ms/``,
``arch.json``, ``summary.json``, ``report.md`` and its PNGs (`jmsnas.report`). On a multi-node
cluster ``runs/`` must be on a filesystem every node sees (Tune's storage rule).
"""

from __future__ import annotations

import datetime
import logging
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from jmsnas import report
from jmsnas.config import Experiment, ExperimentConfig
from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.io import write_text
from jmsnas.strategies.records import Artifact, Outcome, Record
from jmsnas.strategies.registry import kind_of

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
TUNE_NAME = "search"
#: What a trial reports after every search epoch, and again (for the derived network) at the end.
EPOCH_METRICS = ("val_acc", "expected_latency_ms", "derived_latency_ms", "feasible")


# --- what the trials are -----------------------------------------------------------------------


def check_search(exp: Experiment) -> None:
    """Fail now, naming the field, on a tune section the search cannot run (metric, grid values), or a bad teacher."""
    cfg = exp.config
    kind = kind_of(cfg.strategy)
    if kind.check is not None:
        kind.check(exp, cfg.strategy)
    if cfg.tune.metric not in EPOCH_METRICS:
        raise ConfigError(f"cannot schedule on {cfg.tune.metric!r}; a trial reports {', '.join(EPOCH_METRICS)}",
                          file=exp.path, field="tune.metric")
    for key, values in cfg.tune.grid.items():
        for value in values:
            try:
                trial_strategy(cfg, {key: value})
            except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
                why = "; ".join(e["msg"] for e in exc.errors()) if isinstance(exc, ValidationError) else str(exc)
                raise ConfigError(f"grid value {value!r} is not valid: {why}", file=exp.path,
                                  field=f"tune.grid.{key}") from None


def trial_strategy(config: ExperimentConfig, overrides: dict[str, Any]) -> tuple[Any, int]:
    """The strategy and seed of one trial: the experiment's, with the trial's grid values applied."""
    fields = {k: v for k, v in overrides.items() if k not in ("seed", "sample")}
    strategy = kind_of(config.strategy).config.model_validate({**config.strategy.model_dump(), **fields})
    seed = overrides.get("seed", config.seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError("a seed is an integer")
    return strategy, seed + int(overrides.get("sample", 0))


def smoke_config(config: ExperimentConfig) -> ExperimentConfig:
    """``--smoke``: one epoch of search without warm-up, one of retraining, the first grid value of each key.

    A morphism search: one iteration of at most two one-epoch children, a one-epoch teacher; a random
    search: at most two one-epoch candidates (each strategy's ``StrategyKind.smoke``).
    The run goes to ``<name>-smoke`` so that it never blocks the real run.
    """
    s = config.strategy
    short = {"retrain": s.retrain.model_copy(update={"epochs": 1}), **kind_of(s).smoke(s)}
    strategy = s.model_copy(update=short)
    tune_cfg = config.tune.model_copy(update={"grid": {k: v[:1] for k, v in config.tune.grid.items()},
                                              "num_samples": 1})
    return config.model_copy(update={"name": f"{config.name}-smoke", "strategy": strategy, "tune": tune_cfg})


def expected_trials(config: ExperimentConfig) -> int:
    """How many trials the grid and ``num_samples`` make."""
    count = config.tune.num_samples
    for values in config.tune.grid.values():
        count *= len(values)
    return count


# --- the run directory ---------------------------------------------------------------------------


class RunStart(Record):
    """How a run was started (or resumed): `jmsnas.report.run_info`."""

    seed: int
    date: str
    command: list[str]
    versions: dict[str, str | None]
    git_commit: str | None
    git_dirty: bool | None
    processor: str
    machine: str
    cpu_count: int | None
    torch_threads: int
    gpu: str | None


class RunInfo(Artifact):
    """``run.json``: how the run was started (the fields of `RunStart`) and how it was resumed.

    The start's fields are optional only because a run whose ``run.json`` was lost before a resume
    records its resumes alone.
    """

    seed: int | None = None
    date: str | None = None
    command: list[str] | None = None
    versions: dict[str, str | None] | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    processor: str | None = None
    machine: str | None = None
    cpu_count: int | None = None
    torch_threads: int | None = None
    gpu: str | None = None
    resumes: list[RunStart] | None = None


def resume_command(exp_path: Path, *, smoke: bool, address: str | None, extra_args: Sequence[str] = ()) -> str:
    """The exact command that continues this run (``extra_args``: its ``--set`` / ``--output-dir`` options)."""
    parts = ["python", "-m", "jmsnas.search", str(exp_path), "--resume", *extra_args]
    parts += ["--smoke"] if smoke else []
    parts += ["--address", address] if address else []
    return shlex.join(parts)


def frozen_yaml(config: ExperimentConfig, run_dir: Path) -> str:
    """The resolved experiment; ``output_dir`` is set so that the file names this run directory again."""
    frozen = config.model_copy(update={"output_dir": run_dir.parent})
    return yaml.safe_dump(frozen.model_dump(mode="json"), sort_keys=False)


def prepare_run_dir(config: ExperimentConfig, run_dir: Path, *, resume: bool, again: str, tune_state: bool) -> None:
    """Refuse to overwrite a search or to resume nothing; write ``experiment.yaml`` and ``run.json``.

    Args:
        config: the experiment (as run: ``--smoke`` applied).
        run_dir: the run directory.
        resume: continue the interrupted search there.
        again: the command that resumes this run (for the message that refuses to overwrite it).
        tune_state: Tune saved trial state in ``tune/search/`` (`jmsnas.tune` checks).
    """
    experiment_dir = run_dir / TUNE_DIR / TUNE_NAME
    if resume:
        if not tune_state or not (run_dir / "experiment.yaml").is_file():
            raise JmsnasError(f"nothing to resume: {run_dir} holds no interrupted search (or it stopped before "
                              "Tune saved any trial); run without --resume")
        info_path = run_dir / "run.json"
        info = RunInfo.load(info_path) if info_path.is_file() else RunInfo()
        info.resumes = [*(info.resumes or []), RunStart.model_validate(report.run_info(config.seed))]
        info.write(info_path)
        if (run_dir / "experiment.yaml").read_text() != frozen_yaml(config, run_dir):
            log.warning(f"note        the experiment changed since the run started; resuming with "
                        f"{run_dir}/experiment.yaml")
        return
    if tune_state:
        raise JmsnasError(f"{run_dir} already holds a search; continue it with `{again}`, "
                          "or delete the directory to start again")
    if experiment_dir.exists():  # a search stopped before Tune saved anything: nothing to keep
        shutil.rmtree(experiment_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "experiment.yaml", frozen_yaml(config, run_dir))
    RunInfo.of(report.run_info(config.seed)).write(run_dir / "run.json")


# --- one trial's records -------------------------------------------------------------------------


class TrialStart(Record):
    """One start of a trial: when, from which Tune checkpoint, and whether it reused a finished outcome."""

    date: str
    from_checkpoint: str | None
    reused_outcome: bool


class TrialRecord(Artifact):
    """``trials/<trial_id>/trial.json``: the trial's grid values and seed, and every start of it."""

    trial_id: str
    overrides: dict[str, Any]
    seed: int
    starts: list[TrialStart]


def record_start(art: Path, trial_id: str, overrides: dict, seed: int, ckpt: str | None, reused: bool) -> None:
    """Append this start to ``trial.json``: how often a trial ran, and from what."""
    path = art / "trial.json"
    record = (TrialRecord.load(path) if path.exists()
              else TrialRecord(trial_id=trial_id, overrides=overrides, seed=seed, starts=[]))
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record.starts = [*record.starts, TrialStart(date=now, from_checkpoint=ckpt, reused_outcome=reused)]
    record.write(path)


def finished_outcome(art: Path) -> Outcome | None:
    """The trial's ``outcome.json`` (the last file a trial writes), or None when it has none it can read."""
    try:
        return Outcome.load(art / "outcome.json")
    except JmsnasError:
        return None


def final_metrics(outcome: Outcome, art: Path) -> dict:
    """The last report of a trial: the retrained network's figures (its latency is no longer an expectation)."""
    latency = outcome.predicted_latency_ms
    return {"val_acc": outcome.val_acc, "test_acc": outcome.test_acc, "search_val_acc": outcome.search_val_acc,
            "predicted_latency_ms": latency, "expected_latency_ms": latency, "derived_latency_ms": latency,
            "feasible": float(outcome.feasible), "t_const_ms": outcome.t_const_ms, "artifact_dir": str(art),
            "retrained": 1}


# --- after the trials ----------------------------------------------------------------------------


def trial_status(metrics: dict, error: Any, outcome: Outcome | None) -> tuple[str, str | None]:
    """Tune marks a result ``done`` when the trial returned or its scheduler stopped it; not when interrupted."""
    if error is not None:
        return "error", str(error).strip().splitlines()[-1]
    if not metrics.get("done"):
        return "incomplete", None
    if metrics.get("retrained") != 1:
        return "stopped", None
    if outcome is None:
        return "error", "outcome.json not found (on a multi-node cluster runs/ must be on a shared filesystem)"
    return "finished", None


def trial_summary(metrics: dict, error: Any, overrides: dict, config: ExperimentConfig, run_dir: Path) -> dict:
    """One trial as a `jmsnas.report` trial dict, from Tune's last result of it (metrics, error, grid values)."""
    trial_id = metrics["trial_id"]
    art = run_dir / "trials" / trial_id
    if not overrides and (art / "trial.json").is_file():
        overrides = TrialRecord.load(art / "trial.json").overrides
    strategy, seed = trial_strategy(config, overrides)
    outcome = finished_outcome(art)
    status, error = trial_status(metrics, error, outcome)
    trial = {"trial_id": trial_id, "overrides": overrides, "status": status, "t_const_ms": strategy.t_const_ms,
             "seed": seed, "val_acc": None, "test_acc": None, "predicted_latency_ms": None, "feasible": None,
             "compact": None, "artifact_dir": str(art), "error": error,
             "search": {k: metrics[k] for k in ("epoch", *EPOCH_METRICS) if k in metrics and status != "finished"}}
    if status == "finished":
        trial.update({k: getattr(outcome, k) for k in ("val_acc", "test_acc", "predicted_latency_ms", "feasible",
                                                       "compact", "search_val_acc")})
    return trial


def print_summary(summary: dict, run_dir: Path) -> None:
    """The choice per T_const and the overall choice, as the search prints them at its end."""
    log.info("\n".join(["", "choice per T_const", *report.selections_table(summary["selections"])]))
    overall = summary["overall"]
    if overall is None:
        log.info("overall     no constraint was met: no arch.json written")
    else:
        log.info(f"overall     trial {overall['trial_id']}: val acc {overall['val_acc']:.3f}, test acc "
              f"{overall['test_acc']:.3f}, {overall['predicted_latency_ms']:.4g} ms <= {overall['t_const_ms']:g} ms "
              f"-> {run_dir / 'arch.json'}")
    log.info(f"report      {run_dir / 'report.md'}")
