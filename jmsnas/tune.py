"""Ray Tune orchestration of a search: one trial per grid point, resume, then the choice per T_const.

Only this module imports Ray: its API moves between releases, and one module absorbs that.

A trial is a plain `train_fn(config)`: ``config`` holds the trial's grid values (strategy fields,
``seed``, and ``sample`` when ``tune.num_samples`` > 1); everything else is rebuilt inside the
trial from the run directory's frozen ``experiment.yaml`` (passed with `tune.with_parameters`).
The trial runs its strategy's ``run_trial`` (`jmsnas.strategies.registry.STRATEGIES`) with a
`TrialContext` of Ray's pieces. A ``proxyless`` trial runs `run_proxyless` with `TuneReport`,
which reports to Tune after every search epoch with a Lightning checkpoint, so an interrupted
trial continues from its last epoch. After the search the trial derives, retrains and tests, and
reports once more with the final figures.

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

The run directory (its layout, ``experiment.yaml``, ``run.json``, each trial's ``trial.json``, the
trial dicts of the report) is kept by `jmsnas.rundir`, which needs no Ray.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytorch_lightning as pl
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from jmsnas import report
from jmsnas.config import Experiment, ExperimentConfig, ResourcesConfig, load_experiment
from jmsnas.errors import ConfigError, JmsnasError
from jmsnas.rundir import (
    EPOCH_METRICS,
    TUNE_DIR,
    TUNE_NAME,
    check_search,  # noqa: F401 - `jmsnas.search` calls tune.check_search
    expected_trials,
    final_metrics,
    finished_outcome,
    prepare_run_dir,
    print_summary,
    record_start,
    resume_command,
    smoke_config,
    trial_strategy,
    trial_summary,
)
from jmsnas.strategies.records import Outcome
from jmsnas.strategies.registry import TrialContext, kind_of

log = logging.getLogger(__name__)

CKPT_FILE = "search.ckpt"
_EXTRA_METRICS = ("val_loss", "gate_entropy")


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    """Tune's grid: one grid search per key of ``tune.grid``, and one over the samples when ``num_samples`` > 1."""
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


def ray_runner(resources: ResourcesConfig):
    """A morphism ``runner``: one Ray task per child, each with ``resources`` (inside the trial's placement group)."""

    def run(fn, shared, items):
        if not items:
            return []
        task = ray.remote(fn).options(num_cpus=resources.cpu, num_gpus=resources.gpu)
        ref = ray.put(shared)  # the data and the teacher's logits go to the object store once per iteration
        return ray.get([task.remote(ref, item) for item in items])

    return run


def _run_trial(exp: Experiment, strategy: Any, seed: int, art: Path, setup: TrialSetup, checkpoint) -> Outcome:
    """Run one trial's search (its strategy's ``run_trial``); returns its outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_path = None
        if checkpoint is not None:  # only a supernet search reports checkpoints
            ckpt_path = str(Path(checkpoint.to_directory(tmp)) / CKPT_FILE)
        ctx = TrialContext(teacher_dir=setup.run_dir / "teacher", report=tune.report,
                           runner=ray_runner(exp.config.tune.resources_per_trial), callbacks=[TuneReport()],
                           ckpt_path=ckpt_path)
        return Outcome.of(asdict(kind_of(strategy).run_trial(exp, strategy, seed, art, ctx)))


def train_fn(config: dict, setup: TrialSetup) -> None:
    """One Tune trial: search with the trial's overrides, derive, retrain, test (see the module docstring)."""
    exp = load_experiment(setup.experiment_file)
    overrides = dict(config)
    strategy, seed = trial_strategy(exp.config, overrides)
    trial_id = tune.get_context().get_trial_id()
    art = setup.run_dir / "trials" / trial_id
    art.mkdir(parents=True, exist_ok=True)
    done = finished_outcome(art)
    checkpoint = tune.get_checkpoint()
    record_start(art, trial_id, overrides, seed, checkpoint and checkpoint.path, reused=done is not None)
    if done is None:
        done = _run_trial(exp, strategy, seed, art, setup, checkpoint)
    tune.report(final_metrics(done, art))


# --- Ray -----------------------------------------------------------------------------------------


def _has_tune_state(experiment_dir: Path) -> bool:
    """Tune saved trial state: ``tuner.pkl`` alone (a run killed in its first seconds) restores no grid."""
    return tune.Tuner.can_restore(str(experiment_dir)) and any(experiment_dir.glob("experiment_state-*.json"))


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


@dataclass(frozen=True)
class RayStart:
    """How the search got its Ray: the lines that say where its dashboard is, and whether it shuts Ray down."""

    lines: list[str]
    owned: bool


def _connect(address: str, num_cpus: int | None) -> RayStart:
    if num_cpus is not None:
        raise ConfigError("--num-cpus sizes a Ray that jmsnas starts; a cluster joined with --address keeps its own",
                          field="--num-cpus")
    try:
        ctx = ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JmsnasError(f"cannot connect to Ray at {address!r} ({exc}); a cluster that uses token "
                          "authentication also needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
                          "~/.ray/auth_token)") from None
    return RayStart([f"ray         connected to {address}", *_dashboard_lines(ctx.dashboard_url, None)], owned=True)


def start_ray(address: str | None, num_cpus: int | None = None) -> RayStart:
    """Join ``address``, reuse the Ray this process runs already, or start a fresh local Ray.

    Without an address jmsnas never joins another cluster: ``address="local"`` starts a new instance
    even when Ray's default-address file (``ray_current_cluster`` in Ray's temp dir) names a cluster
    that has gone away, where a bare ``ray.init()`` would try to connect and fail. Ray detects the CPUs
    (and container limits) itself; ``num_cpus`` overrides that only when given.

    Args:
        address: a Ray cluster to join (``--address``, or ``RAY_ADDRESS``); None: local.
        num_cpus: CPUs of the local instance (``--num-cpus``); None: Ray's own detection.
    """
    if address:
        return _connect(address, num_cpus)
    if ray.is_initialized():  # a notebook's Ray: used, and left running
        cpus = ray.cluster_resources().get("CPU", 0.0)
        return RayStart([f"ray         the Ray this process already runs, {cpus:g} CPUs"], owned=False)
    kwargs = {} if num_cpus is None else {"num_cpus": num_cpus}
    log.debug(f"ray.init(address='local', {kwargs}): a new local instance, whatever ray_current_cluster names")
    try:
        ctx = ray.init(address="local", include_dashboard=True, **kwargs)
        note = None
    except Exception as exc:  # Ray raises a bare Exception when the dashboard's packages are missing
        ray.shutdown()
        ctx = ray.init(address="local", include_dashboard=False, **kwargs)
        note = f"it could not start ({exc}); the search runs without it"
    cpus = ray.cluster_resources().get("CPU", 0.0)
    return RayStart([f"ray         started on this machine, {cpus:g} CPUs", *_dashboard_lines(ctx.dashboard_url, note)],
                    owned=True)


def trial_bundles(config: ExperimentConfig) -> list[dict[str, float]]:
    """The placement-group bundles of one trial: its own, then one per task it runs at once.

    A morphism trial runs its children as tasks (``parallel_children`` at once); its own bundle is then
    empty, since it waits while they train.
    """
    res = config.tune.resources_per_trial
    bundle = {k: v for k, v in (("CPU", res.cpu), ("GPU", res.gpu)) if v > 0}
    workers = kind_of(config.strategy).workers(config.strategy, config.tune.grid)
    if workers is not None:
        return [{}] + [dict(bundle) for _ in range(workers)]
    return [bundle]


def _check_fits_cluster(config: ExperimentConfig, file: Path) -> None:
    """A trial that needs more CPUs (or GPUs) than Ray has would wait forever: say so instead."""
    bundles = trial_bundles(config)
    parallel = kind_of(config.strategy).parallel_field
    for kind, key in (("CPU", "cpu"), ("GPU", "gpu")):
        need = sum(b.get(kind, 0.0) for b in bundles)
        have = ray.cluster_resources().get(kind, 0.0)
        if need > have:
            field = f"strategy.{parallel}" if parallel is not None else f"tune.resources_per_trial.{key}"
            raise ConfigError(f"one trial needs {need:g} {kind}s, Ray has {have:g}; lower it", file=file, field=field)


def _trainable(config: ExperimentConfig, run_dir: Path):
    """`train_fn` with the run's constants and a trial's resources (a placement group when it runs tasks)."""
    setup = TrialSetup(experiment_file=run_dir / "experiment.yaml", run_dir=run_dir)
    res = config.tune.resources_per_trial
    resources = (tune.PlacementGroupFactory(trial_bundles(config)) if kind_of(config.strategy).parallel_field
                 else {"cpu": res.cpu, "gpu": res.gpu})
    return tune.with_resources(tune.with_parameters(train_fn, setup=setup), resources)


def build_tuner(config: ExperimentConfig, run_dir: Path, *, resume: bool) -> tune.Tuner:
    """A new Tuner over the grid, or the interrupted one restored (finished trials are kept, not rerun)."""
    trainable = _trainable(config, run_dir)
    if resume:
        return tune.Tuner.restore(str(run_dir / TUNE_DIR / TUNE_NAME), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    t = config.tune
    # grace_period=1: a trial survives at least one epoch; max_t leaves room for the final report.
    max_t = kind_of(config.strategy).max_reports(config.strategy, t.grid)  # reports of the longest trial
    scheduler = ASHAScheduler(grace_period=1, max_t=max_t) if t.scheduler == "asha" else FIFOScheduler()
    # reuse_actors: a trial's process imports torch and Lightning once, not once per trial (seconds each).
    return tune.Tuner(
        trainable, param_space=param_space(config),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, scheduler=scheduler, num_samples=1,
                                    max_concurrent_trials=t.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(run_dir / TUNE_DIR),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


# --- after the trials ----------------------------------------------------------------------------


def collect_trials(grid: tune.ResultGrid, config: ExperimentConfig, run_dir: Path) -> list[dict]:
    """Every trial of the grid as a `jmsnas.report` trial dict, in Tune's order."""
    return [trial_summary(dict(result.metrics or {}), result.error, dict(result.config or {}), config, run_dir)
            for result in grid]


def run_search(exp: Experiment, *, resume: bool = False, address: str | None = None, smoke: bool = False,
               extra_args: Sequence[str] = (), num_cpus: int | None = None) -> int:
    """Run (or resume) the experiment's search through Ray Tune and write the run directory.

    Args:
        exp: the loaded, checked experiment.
        resume: continue the interrupted search of this experiment's run directory.
        address: a Ray cluster to join; by default (and without ``RAY_ADDRESS``) the Ray this process runs,
            else a fresh local one (`start_ray`), shut down at the end.
        smoke: a one-epoch run of the first grid point, into ``<name>-smoke`` (see `smoke_config`).
        extra_args: command-line options the resume command repeats (``--set``, ``--output-dir``).
        num_cpus: CPUs of a local Ray (default: Ray's own detection).

    Returns:
        The exit status: 0 done, 1 some trial failed, 130 interrupted (the resume command is printed).
    """
    config = smoke_config(exp.config) if smoke else exp.config
    run_dir = Experiment(config, exp.path, exp.topology, exp.search_space).run_dir.resolve()
    address = address or os.environ.get("RAY_ADDRESS") or None
    again = resume_command(exp.path, smoke=smoke, address=address, extra_args=extra_args)
    prepare_run_dir(config, run_dir, resume=resume, again=again,
                    tune_state=_has_tune_state(run_dir / TUNE_DIR / TUNE_NAME))
    if resume:
        config = load_experiment(run_dir / "experiment.yaml").config
    log.info(f"run         {run_dir}{' (smoke: 1 epoch, first grid point)' if smoke else ''}")
    handler = signal.getsignal(signal.SIGINT)
    started = None
    try:
        started = start_ray(address, num_cpus)
        log.info("\n".join(started.lines))
        _check_fits_cluster(config, exp.path)
        grid = build_tuner(config, run_dir, resume=resume).fit()
        trials = collect_trials(grid, config, run_dir)
        unfinished = expected_trials(config) - sum(t["status"] != "incomplete" for t in trials)
        if unfinished:
            log.warning(f"\ninterrupted: {unfinished} trial(s) unfinished; resume with:\n  {again}")
            return 130
        summary = report.write_outputs(run_dir, config.name, trials)
    except KeyboardInterrupt:
        log.warning(f"\ninterrupted; resume with:\n  {again}")
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)  # Tune leaves its Ctrl-C handler installed
        if started is None or started.owned:
            ray.shutdown()
    print_summary(summary, run_dir)
    failed = sum(t["status"] == "error" for t in trials)
    if failed:
        log.warning(f"{failed} trial(s) failed (see summary.json); retry them with:\n  {again}")
        return 1
    return 0
