"""Ray Tune orchestration of a search: one trial per grid point, resume, then the choice per T_const.

Only this module imports Ray: its API moves between releases, and one module absorbs that.

A trial is a plain `train_fn(config)`: ``config`` holds the trial's grid values (strategy fields,
``seed``, and ``sample`` when ``tune.num_samples`` > 1); everything else is rebuilt inside the
trial from the run directory's frozen ``experiment.yaml`` (passed with `tune.with_parameters`).
The trial runs `run_proxyless` with `TuneReport`, which reports to Tune after every search epoch
with a Lightning checkpoint, so an interrupted trial continues from its last epoch. After the
search the trial derives, retrains and tests, and reports once more with the final figures.

A ``morphism`` trial runs `run_morphism` instead: it reports after the start network and after
every hill-climbing iteration (the same metrics, for the current parent), trains each iteration's
children in parallel as Ray tasks inside the trial's placement group (one bundle of
``resources_per_trial`` per ``parallel_children``; the trial's own bundle is empty, since it waits
while they train), and resumes from the climb state it saves in its trial directory. Its teacher is
trained once per run, in ``runs/<name>/teacher/``, and shared by all trials.

A ``random`` trial runs `run_random`: it reports after every trained candidate (the best one so far)
and resumes from the ``random.json`` it rewrites after each.

Repeats: sample ``i`` of ``num_samples`` runs with seed + ``i``, so repeats differ. A trial whose
``outcome.json`` is already complete reports it again instead of rerunning: Tune saves its own
state at most every ~10 s, so a run killed just after a trial finished may ask to resume it.

Layout of ``runs/<name>/``: ``experiment.yaml``, ``run.json``, ``tune/search/`` (Tune's results and
checkpoints), ``trials/<trial_id>/`` (each trial's Lightning logs and artifacts, ``trial.json``),
``best/t<T>ms/``, ``arch.json``, ``summary.json``, ``report.md`` and its PNGs (`jmsnas.report`).
On a multi-node cluster ``runs/`` must be on a filesystem every node sees (Tune's storage rule).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytorch_lightning as pl
import ray
import yaml
from pydantic import ValidationError
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from jmsnas import report
from jmsnas.config import Experiment, ExperimentConfig, MorphismConfig, RandomConfig, ResourcesConfig, load_experiment
from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.io import write_json

TUNE_DIR = "tune"
TUNE_NAME = "search"
CKPT_FILE = "search.ckpt"
#: What a trial reports after every search epoch, and again (for the derived network) at the end.
EPOCH_METRICS = ("val_acc", "expected_latency_ms", "derived_latency_ms", "feasible")
_EXTRA_METRICS = ("val_loss", "gate_entropy")


# --- what the trials are -----------------------------------------------------------------------


def check_search(exp: Experiment) -> None:
    """Fail now, naming the field, on a tune section the search cannot run (metric, grid values), or a bad teacher."""
    from jmsnas.strategies.teacher import check_teacher

    check_teacher(exp)
    cfg = exp.config
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
    strategy = type(config.strategy).model_validate({**config.strategy.model_dump(), **fields})
    seed = overrides.get("seed", config.seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError("a seed is an integer")
    return strategy, seed + int(overrides.get("sample", 0))


def smoke_config(config: ExperimentConfig) -> ExperimentConfig:
    """``--smoke``: one epoch of search without warm-up, one of retraining, the first grid value of each key.

    A morphism search: one iteration of at most two one-epoch children, a one-epoch teacher; a random
    search: at most two one-epoch candidates.
    The run goes to ``<name>-smoke`` so that it never blocks the real run.
    """
    s = config.strategy
    short = {"retrain": s.retrain.model_copy(update={"epochs": 1})}
    if isinstance(s, MorphismConfig):
        short.update(iterations=1, children=min(s.children, 2), child_epochs=1,
                     teacher=s.teacher.model_copy(update={"epochs": 1}))
    elif isinstance(s, RandomConfig):
        short.update(num_candidates=min(s.num_candidates, 2), sample_epochs=1)
    else:
        short.update(epochs=1, warmup_epochs=0)
    strategy = s.model_copy(update=short)
    tune_cfg = config.tune.model_copy(update={"grid": {k: v[:1] for k, v in config.tune.grid.items()},
                                              "num_samples": 1})
    return config.model_copy(update={"name": f"{config.name}-smoke", "strategy": strategy, "tune": tune_cfg})


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    space: dict[str, Any] = {key: tune.grid_search(list(values)) for key, values in config.tune.grid.items()}
    if config.tune.num_samples > 1:
        space["sample"] = tune.grid_search(list(range(config.tune.num_samples)))
    return space


# --- one trial -----------------------------------------------------------------------------------


class TuneReport(pl.callbacks.Checkpoint):
    """Reports the search metrics to Tune after every epoch, with a Lightning checkpoint to resume from.

    A `Checkpoint` subclass so that Lightning calls it after the module's own ``on_train_epoch_end``
    (the learning-rate step): a checkpoint saved earlier resumes one scheduler step behind.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = trainer.callback_metrics
        metrics = {k: float(found[k]) for k in EPOCH_METRICS + _EXTRA_METRICS if k in found}
        metrics.update(epoch=trainer.current_epoch, retrained=0)
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(Path(tmp) / CKPT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


@dataclass(frozen=True)
class TrialSetup:
    """The constants every trial shares (`tune.with_parameters`)."""

    experiment_file: Path
    run_dir: Path


def _finished_outcome(art: Path) -> dict | None:
    try:
        return json.loads((art / "outcome.json").read_text())
    except (OSError, ValueError):
        return None


def _record_start(art: Path, trial_id: str, overrides: dict, seed: int, ckpt: str | None, reused: bool) -> None:
    """Append this start to ``trial.json``: how often a trial ran, and from what."""
    path = art / "trial.json"
    data = json.loads(path.read_text()) if path.exists() else {"trial_id": trial_id, "overrides": overrides,
                                                               "seed": seed, "starts": []}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    data["starts"].append({"date": now, "from_checkpoint": ckpt, "reused_outcome": reused})
    write_json(path, data)


def final_metrics(outcome: dict, art: Path) -> dict:
    """The last report of a trial: the retrained network's figures (its latency is no longer an expectation)."""
    latency = outcome["predicted_latency_ms"]
    return {"val_acc": outcome["val_acc"], "test_acc": outcome["test_acc"], "search_val_acc": outcome["search_val_acc"],
            "predicted_latency_ms": latency, "expected_latency_ms": latency, "derived_latency_ms": latency,
            "feasible": float(outcome["feasible"]), "t_const_ms": outcome["t_const_ms"], "artifact_dir": str(art),
            "retrained": 1}


def ray_runner(resources: ResourcesConfig):
    """A morphism ``runner``: one Ray task per child, each with ``resources`` (inside the trial's placement group)."""

    def run(fn, shared, items):
        if not items:
            return []
        task = ray.remote(fn).options(num_cpus=resources.cpu, num_gpus=resources.gpu)
        ref = ray.put(shared)  # the data and the teacher's logits go to the object store once per iteration
        return ray.get([task.remote(ref, item) for item in items])

    return run


def _run_trial(exp: Experiment, strategy: Any, seed: int, art: Path, setup: TrialSetup, checkpoint):
    """Run one trial's search; returns its ``SearchOutcome``."""
    if isinstance(strategy, MorphismConfig):
        from jmsnas.strategies.morphism import run_morphism

        return run_morphism(exp, strategy, seed, art, progress=False, teacher_dir=setup.run_dir / "teacher",
                            runner=ray_runner(exp.config.tune.resources_per_trial), report=tune.report)
    if isinstance(strategy, RandomConfig):
        from jmsnas.strategies.random_search import run_random

        return run_random(exp, strategy, seed, art, progress=False, report=tune.report)
    from jmsnas.strategies.run import run_proxyless  # here: `--check` need not import the latency models

    with tempfile.TemporaryDirectory() as tmp:
        ckpt_path = None
        if checkpoint is not None:
            ckpt_path = str(Path(checkpoint.to_directory(tmp)) / CKPT_FILE)
        return run_proxyless(exp, strategy, seed, art, callbacks=[TuneReport()], ckpt_path=ckpt_path,
                             progress=False)


def train_fn(config: dict, setup: TrialSetup) -> None:
    """One Tune trial: search with the trial's overrides, derive, retrain, test (see the module docstring)."""
    exp = load_experiment(setup.experiment_file)
    overrides = dict(config)
    strategy, seed = trial_strategy(exp.config, overrides)
    trial_id = tune.get_context().get_trial_id()
    art = setup.run_dir / "trials" / trial_id
    art.mkdir(parents=True, exist_ok=True)
    done = _finished_outcome(art)
    checkpoint = tune.get_checkpoint()
    _record_start(art, trial_id, overrides, seed, checkpoint and checkpoint.path, reused=done is not None)
    if done is None:
        done = asdict(_run_trial(exp, strategy, seed, art, setup, checkpoint))
    tune.report(final_metrics(done, art))


# --- the run directory ---------------------------------------------------------------------------


def resume_command(exp_path: Path, *, smoke: bool, address: str | None) -> str:
    """The exact command that continues this run."""
    parts = ["python", "-m", "jmsnas.search", str(exp_path), "--resume"]
    parts += ["--smoke"] if smoke else []
    parts += ["--address", address] if address else []
    return shlex.join(parts)


def _frozen_yaml(config: ExperimentConfig, run_dir: Path) -> str:
    """The resolved experiment; ``output_dir`` is set so that the file names this run directory again."""
    frozen = config.model_copy(update={"output_dir": run_dir.parent})
    return yaml.safe_dump(frozen.model_dump(mode="json"), sort_keys=False)


def _has_tune_state(experiment_dir: Path) -> bool:
    """Tune saved trial state: ``tuner.pkl`` alone (a run killed in its first seconds) restores no grid."""
    return tune.Tuner.can_restore(str(experiment_dir)) and any(experiment_dir.glob("experiment_state-*.json"))


def prepare_run_dir(config: ExperimentConfig, run_dir: Path, *, resume: bool, again: str) -> None:
    """Refuse to overwrite a search or to resume nothing; write ``experiment.yaml`` and ``run.json``."""
    experiment_dir = run_dir / TUNE_DIR / TUNE_NAME
    if resume:
        if not _has_tune_state(experiment_dir) or not (run_dir / "experiment.yaml").is_file():
            raise JmsnasError(f"nothing to resume: {run_dir} holds no interrupted search (or it stopped before "
                              "Tune saved any trial); run without --resume")
        info_path = run_dir / "run.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info.setdefault("resumes", []).append(report.run_info(config.seed))
        write_json(info_path, info)
        if (run_dir / "experiment.yaml").read_text() != _frozen_yaml(config, run_dir):
            print(f"note        the experiment changed since the run started; resuming with {run_dir}/experiment.yaml")
        return
    if _has_tune_state(experiment_dir):
        raise JmsnasError(f"{run_dir} already holds a search; continue it with `{again}`, "
                          "or delete the directory to start again")
    if experiment_dir.exists():  # a search stopped before Tune saved anything: nothing to keep
        shutil.rmtree(experiment_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "experiment.yaml").write_text(_frozen_yaml(config, run_dir))
    write_json(run_dir / "run.json", report.run_info(config.seed))


# --- Ray -----------------------------------------------------------------------------------------


def _dashboard_lines(url: str | None, note: str | None) -> list[str]:
    if not url:
        return [f"dashboard   not running{f': {note}' if note else ''}"]
    url = url if urlparse(url).scheme else f"http://{url}"
    parsed = urlparse(url)
    port = parsed.port or 8265
    host = parsed.hostname if parsed.hostname not in ("127.0.0.1", "localhost", "0.0.0.0") else socket.gethostname()
    lines = [f"dashboard   {url}",
             f"            from another machine: ssh -L {port}:localhost:{port} {host}, then open http://localhost:{port}"]
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "token":
        lines.append("            token authentication is on: the dashboard asks for Ray's token; "
                     "`ray get-auth-token` prints it")
    elif mode:
        lines.append(f"            token authentication is off (RAY_AUTH_MODE={mode})")
    return lines


def start_ray(address: str | None) -> list[str]:
    """Start Ray on this machine's CPUs with its dashboard, or connect to ``address``.

    Returns:
        Lines that say where the dashboard is and how to reach it.
    """
    if address:
        try:
            ctx = ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JmsnasError(f"cannot connect to Ray at {address!r} ({exc}); a cluster that uses token "
                              "authentication also needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
                              "~/.ray/auth_token)") from None
        return [f"ray         connected to {address}", *_dashboard_lines(ctx.dashboard_url, None)]
    try:
        ctx = ray.init(num_cpus=os.cpu_count(), include_dashboard=True)
        note = None
    except Exception as exc:  # Ray raises a bare Exception when the dashboard's packages are missing
        ray.shutdown()
        ctx = ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        note = f"it could not start ({exc}); the search runs without it"
    return [f"ray         started on this machine, {os.cpu_count()} CPUs", *_dashboard_lines(ctx.dashboard_url, note)]


def trial_bundles(config: ExperimentConfig) -> list[dict[str, float]]:
    """The placement-group bundles of one trial: its own, then one per child a morphism trial trains at once."""
    res = config.tune.resources_per_trial
    bundle = {k: v for k, v in (("CPU", res.cpu), ("GPU", res.gpu)) if v > 0}
    if isinstance(config.strategy, MorphismConfig):
        workers = max([config.strategy.parallel_children, *config.tune.grid.get("parallel_children", [])])
        return [{}] + [dict(bundle) for _ in range(workers)]
    return [bundle]


def _check_fits_cluster(config: ExperimentConfig, file: Path) -> None:
    """A trial that needs more CPUs than Ray has would wait forever: say so instead."""
    need = sum(b.get("CPU", 0.0) for b in trial_bundles(config))
    have = ray.cluster_resources().get("CPU", 0.0)
    if need > have:
        field = ("strategy.parallel_children" if isinstance(config.strategy, MorphismConfig)
                 else "tune.resources_per_trial.cpu")
        raise ConfigError(f"one trial needs {need:g} CPUs, Ray has {have:g}; lower it", file=file, field=field)


def _trainable(config: ExperimentConfig, run_dir: Path):
    setup = TrialSetup(experiment_file=run_dir / "experiment.yaml", run_dir=run_dir)
    res = config.tune.resources_per_trial
    resources = (tune.PlacementGroupFactory(trial_bundles(config)) if isinstance(config.strategy, MorphismConfig)
                 else {"cpu": res.cpu, "gpu": res.gpu})
    return tune.with_resources(tune.with_parameters(train_fn, setup=setup), resources)


def _max_reports(config: ExperimentConfig) -> int:
    """Reports of the longest trial: one per epoch (proxyless), per iteration and start (morphism) or per
    candidate (random), and the last."""
    s, grid = config.strategy, config.tune.grid
    if isinstance(s, MorphismConfig):
        return max([s.iterations, *grid.get("iterations", [])]) + 2
    if isinstance(s, RandomConfig):
        return max([s.num_candidates, *grid.get("num_candidates", [])]) + 1
    return max([s.epochs, *grid.get("epochs", [])]) + 1


def build_tuner(config: ExperimentConfig, run_dir: Path, *, resume: bool) -> tune.Tuner:
    """A new Tuner over the grid, or the interrupted one restored (finished trials are kept, not rerun)."""
    trainable = _trainable(config, run_dir)
    if resume:
        return tune.Tuner.restore(str(run_dir / TUNE_DIR / TUNE_NAME), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    t = config.tune
    # grace_period=1: a trial survives at least one epoch; max_t leaves room for the final report.
    scheduler = ASHAScheduler(grace_period=1, max_t=_max_reports(config)) if t.scheduler == "asha" else FIFOScheduler()
    # reuse_actors: a trial's process imports torch and Lightning once, not once per trial (seconds each).
    return tune.Tuner(
        trainable, param_space=param_space(config),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, scheduler=scheduler, num_samples=1,
                                    max_concurrent_trials=t.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(run_dir / TUNE_DIR),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


# --- after the trials ----------------------------------------------------------------------------


def _status(metrics: dict, error: Any, outcome: dict | None) -> tuple[str, str | None]:
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


def _trial_dict(result: Any, config: ExperimentConfig, run_dir: Path) -> dict:
    metrics = dict(result.metrics or {})
    trial_id = metrics["trial_id"]
    art = run_dir / "trials" / trial_id
    overrides = dict(result.config or {})
    if not overrides and (art / "trial.json").is_file():
        overrides = json.loads((art / "trial.json").read_text())["overrides"]
    strategy, seed = trial_strategy(config, overrides)
    outcome = _finished_outcome(art)
    status, error = _status(metrics, result.error, outcome)
    trial = {"trial_id": trial_id, "overrides": overrides, "status": status, "t_const_ms": strategy.t_const_ms,
             "seed": seed, "val_acc": None, "test_acc": None, "predicted_latency_ms": None, "feasible": None,
             "compact": None, "artifact_dir": str(art), "error": error,
             "search": {k: metrics[k] for k in ("epoch", *EPOCH_METRICS) if k in metrics and status != "finished"}}
    if status == "finished":
        trial.update({k: outcome[k] for k in ("val_acc", "test_acc", "predicted_latency_ms", "feasible", "compact",
                                              "search_val_acc")})
    return trial


def collect_trials(grid: tune.ResultGrid, config: ExperimentConfig, run_dir: Path) -> list[dict]:
    """Every trial of the grid as a `jmsnas.report` trial dict, in Tune's order."""
    return [_trial_dict(result, config, run_dir) for result in grid]


def expected_trials(config: ExperimentConfig) -> int:
    """How many trials the grid and ``num_samples`` make."""
    count = config.tune.num_samples
    for values in config.tune.grid.values():
        count *= len(values)
    return count


def _print_summary(summary: dict, run_dir: Path) -> None:
    print("\n".join(["", "choice per T_const", *report.selections_table(summary["selections"])]))
    overall = summary["overall"]
    if overall is None:
        print("overall     no constraint was met: no arch.json written")
    else:
        print(f"overall     trial {overall['trial_id']}: val acc {overall['val_acc']:.3f}, test acc "
              f"{overall['test_acc']:.3f}, {overall['predicted_latency_ms']:.4g} ms <= {overall['t_const_ms']:g} ms "
              f"-> {run_dir / 'arch.json'}")
    print(f"report      {run_dir / 'report.md'}")


def run_search(exp: Experiment, *, resume: bool = False, address: str | None = None, smoke: bool = False) -> int:
    """Run (or resume) the experiment's search through Ray Tune and write the run directory.

    Args:
        exp: the loaded, checked experiment.
        resume: continue the interrupted search of this experiment's run directory.
        address: a Ray cluster to connect to; by default (and without ``RAY_ADDRESS``) Ray starts here.
        smoke: a one-epoch run of the first grid point, into ``<name>-smoke`` (see `smoke_config`).

    Returns:
        The exit status: 0 done, 1 some trial failed, 130 interrupted (the resume command is printed).
    """
    config = smoke_config(exp.config) if smoke else exp.config
    run_dir = Experiment(config, exp.path, exp.topology, exp.search_space).run_dir.resolve()
    address = address or os.environ.get("RAY_ADDRESS") or None
    again = resume_command(exp.path, smoke=smoke, address=address)
    prepare_run_dir(config, run_dir, resume=resume, again=again)
    if resume:
        config = load_experiment(run_dir / "experiment.yaml").config
    print(f"run         {run_dir}{' (smoke: 1 epoch, first grid point)' if smoke else ''}")
    handler = signal.getsignal(signal.SIGINT)
    try:
        print("\n".join(start_ray(address)), flush=True)
        _check_fits_cluster(config, exp.path)
        grid = build_tuner(config, run_dir, resume=resume).fit()
        trials = collect_trials(grid, config, run_dir)
        unfinished = expected_trials(config) - sum(t["status"] != "incomplete" for t in trials)
        if unfinished:
            print(f"\ninterrupted: {unfinished} trial(s) unfinished; resume with:\n  {again}")
            return 130
        summary = report.write_outputs(run_dir, config.name, trials)
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with:\n  {again}")
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)  # Tune leaves its Ctrl-C handler installed
        ray.shutdown()
    _print_summary(summary, run_dir)
    failed = sum(t["status"] == "error" for t in trials)
    if failed:
        print(f"{failed} trial(s) failed (see summary.json); retry them with:\n  {again}")
        return 1
    return 0
