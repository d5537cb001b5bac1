"""`python -m jmsnas.search`: trials through Ray Tune end to end, resume after a kill, and the checks before Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import jmsnas
from jmsnas.config import load_experiment
from jmsnas.rundir import expected_trials, smoke_config, trial_strategy
from jmsnas.search import main

RUN_FILES = ("experiment.yaml", "run.json", "summary.json", "report.md", "pareto.png", "latency_breakdown.png",
             "arch.json", "best/t1000ms/arch.json", "best/t1000ms/model.pt")


@pytest.fixture
def two_trials(tiny_experiment: dict, tmp_path: Path) -> dict:
    """Two one-epoch trials: T_const 1 ms (unreachable) and 1000 ms (always met)."""
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["output_dir"] = str(tmp_path / "runs")
    tiny_experiment["strategy"].update(epochs=1, warmup_epochs=0, retrain={"epochs": 1})
    tiny_experiment["tune"] = {"grid": {"t_const_ms": [1.0, 1000.0]}}
    return tiny_experiment


def _check_summary(run_dir: Path) -> dict:
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = {t["t_const_ms"]: t for t in summary["trials"]}
    assert sorted(trials) == [1.0, 1000.0] and all(t["status"] == "finished" for t in trials.values())
    for t in trials.values():
        assert t["feasible"] == (t["predicted_latency_ms"] <= t["t_const_ms"])
        assert 0 <= t["val_acc"] <= 1 and 0 <= t["test_acc"] <= 1
        assert (Path(t["artifact_dir"]) / "model.pt").is_file()
    slow, fast = summary["selections"]
    assert (slow["t_const_ms"], slow["feasible"], slow["trial_id"]) == (1.0, False, None)
    assert slow["lowest_latency_ms"] == trials[1.0]["predicted_latency_ms"] > 1.0  # reported, not hidden
    assert fast["feasible"] and fast["trial_id"] == trials[1000.0]["trial_id"] == summary["overall"]["trial_id"]
    chosen = Path(trials[1000.0]["artifact_dir"])
    assert (run_dir / "arch.json").read_text() == (chosen / "arch.json").read_text()
    assert not (run_dir / "best" / "t1ms").exists()
    return summary


def test_search_end_to_end(two_trials: dict, write_experiment, capsys) -> None:
    path = write_experiment(two_trials)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    run_dir = Path(two_trials["output_dir"]) / "tiny"
    assert "dashboard" in out and "report.md" in out
    _check_summary(run_dir)
    frozen = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    assert frozen["tune"]["grid"] == {"t_const_ms": [1.0, 1000.0]} and frozen["output_dir"] == str(run_dir.parent)
    assert load_experiment(run_dir / "experiment.yaml").run_dir == run_dir  # the frozen file names this run again
    info = json.loads((run_dir / "run.json").read_text())
    assert set(info["versions"]) >= {"torch", "lightning", "ray", "jmsnas"} and info["seed"] == 0
    assert info["processor"] and info["torch_threads"] >= 1
    for t in json.loads((run_dir / "summary.json").read_text())["trials"]:  # one start each, from scratch
        starts = json.loads((Path(t["artifact_dir"]) / "trial.json").read_text())["starts"]
        assert [s["from_checkpoint"] for s in starts] == [None]
    _check_load_run(run_dir)
    # the same experiment again: refused (before Ray starts), pointing at --resume
    assert main([str(path)]) == 2
    assert "--resume" in capsys.readouterr().err


def _check_load_run(run_dir: Path) -> None:
    """`jmsnas.load_run` reads back what the files hold."""
    summary = json.loads((run_dir / "summary.json").read_text())
    run = jmsnas.load_run(run_dir)
    assert run.dir == run_dir.resolve()
    assert [t.trial_id for t in run.trials] == [t["trial_id"] for t in summary["trials"]]
    rows = run.rows()
    assert [(r["val_acc"], r["test_acc"], r["t_const_ms"]) for r in rows] == [
        (t["val_acc"], t["test_acc"], t["t_const_ms"]) for t in summary["trials"]]
    assert run.best is not None and run.best.trial_id == summary["overall"]["trial_id"]
    assert run.choice(1000.0).feasible and not run.choice(1.0).feasible
    with pytest.raises(KeyError, match="1, 1000"):
        run.choice(5.0)
    chosen = run.outcome(run.best.trial_id)
    assert chosen.compact == json.loads((Path(run.best.artifact_dir) / "outcome.json").read_text())["compact"]
    assert run.experiment.tune.grid == {"t_const_ms": [1.0, 1000.0]}


def _wait_for_first_outcome(proc: subprocess.Popen, trials_dir: Path, timeout_s: float = 120.0) -> Path:
    """The first trial's ``outcome.json`` once it is complete (the last file a trial writes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in trials_dir.glob("*/outcome.json"):
            try:
                json.loads(path.read_text())
                return path
            except ValueError:
                pass  # being written
        assert proc.poll() is None, "the search ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no trial finished in time")


def test_resume_after_kill(two_trials: dict, write_experiment, tmp_path: Path) -> None:
    two_trials["name"] = "killed"
    two_trials["tune"]["max_concurrent_trials"] = 1
    path = write_experiment(two_trials)
    run_dir = Path(two_trials["output_dir"]) / "killed"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jmsnas.search", str(path)], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            outcome = _wait_for_first_outcome(proc, run_dir / "trials")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    first = outcome.parent
    stamp = (outcome.stat().st_mtime_ns, (first / "model.pt").stat().st_mtime_ns)
    metrics = (first / "search" / "metrics.csv").read_text()
    assert not (run_dir / "summary.json").exists()

    assert main([str(path), "--resume"]) == 0
    summary = _check_summary(run_dir)
    assert (outcome.stat().st_mtime_ns, (first / "model.pt").stat().st_mtime_ns) == stamp  # not rerun
    assert (first / "search" / "metrics.csv").read_text() == metrics
    starts = json.loads((first / "trial.json").read_text())["starts"]
    assert not starts[0]["reused_outcome"] and all(s["reused_outcome"] for s in starts[1:])
    assert first.name in {t["trial_id"] for t in summary["trials"]}
    assert len(json.loads((run_dir / "run.json").read_text())["resumes"]) == 1


def test_resume_without_a_run_is_an_error(two_trials: dict, write_experiment, capsys) -> None:
    assert main([str(write_experiment(two_trials)), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_morphism_passes_check(tiny_experiment: dict, write_experiment, capsys) -> None:
    tiny_experiment["strategy"] = {"name": "morphism", "t_const_ms": 3.0}
    tiny_experiment["tune"] = {"grid": {"iterations": [1, 2], "kd_weight": [0.5]}}
    assert main([str(write_experiment(tiny_experiment)), "--check"]) == 0
    out = capsys.readouterr().out
    assert "morphism (KD at T=20 from teacher 'wide'; 4 iterations x 4 children, 2 at once), T_const 3 ms" in out
    tiny_experiment["tune"] = {"grid": {"children": [2, 0]}}  # a grid value the strategy rejects
    assert main([str(write_experiment(tiny_experiment)), "--check"]) == 2
    assert "tune.grid.children" in capsys.readouterr().err


@pytest.mark.parametrize(("tune_section", "field"), [
    ({"grid": {"lambda2": [1e-3, -1.0]}}, "tune.grid.lambda2"),
    ({"grid": {"seed": [0, "one"]}}, "tune.grid.seed"),
    ({"metric": "accuracy"}, "tune.metric"),
])
def test_bad_tune_section_rejected_at_check(tune_section: dict, field: str, tiny_experiment: dict, write_experiment,
                                            capsys) -> None:
    tiny_experiment["tune"] = tune_section
    assert main([str(write_experiment(tiny_experiment)), "--check"]) == 2
    assert field in capsys.readouterr().err


def test_trial_strategy_applies_overrides(tiny_experiment: dict, write_experiment) -> None:
    tiny_experiment["seed"] = 7
    tiny_experiment["tune"] = {"grid": {"t_const_ms": [1.0, 2.0], "seed": [0, 1]}, "num_samples": 3}
    config = load_experiment(write_experiment(tiny_experiment)).config
    assert expected_trials(config) == 12
    strategy, seed = trial_strategy(config, {"t_const_ms": 2.0, "lambda2": 0.5})
    assert (strategy.t_const_ms, strategy.lambda2, seed) == (2.0, 0.5, 7)
    assert trial_strategy(config, {"seed": 1, "sample": 2})[1] == 3  # repeats differ by seed


def test_smoke_config_morphism(tiny_experiment: dict, write_experiment) -> None:
    tiny_experiment["strategy"] = {"name": "morphism", "t_const_ms": 3.0, "children": 5}
    smoke = smoke_config(load_experiment(write_experiment(tiny_experiment)).config)
    s = smoke.strategy
    assert (s.iterations, s.children, s.child_epochs, s.teacher.epochs, s.retrain.epochs) == (1, 2, 1, 1, 1)


def test_smoke_config_random(tiny_experiment: dict, write_experiment) -> None:
    tiny_experiment["strategy"] = {"name": "random", "t_const_ms": 3.0, "num_candidates": 5, "sample_epochs": 4}
    smoke = smoke_config(load_experiment(write_experiment(tiny_experiment)).config)
    s = smoke.strategy
    assert (s.num_candidates, s.sample_epochs, s.retrain.epochs) == (2, 1, 1)


def test_smoke_config(tiny_experiment: dict, write_experiment) -> None:
    tiny_experiment["tune"] = {"grid": {"t_const_ms": [3.0, 4.0], "lambda2": [0.1, 0.2]}, "num_samples": 2}
    smoke = smoke_config(load_experiment(write_experiment(tiny_experiment)).config)
    assert smoke.name == "tiny-smoke" and expected_trials(smoke) == 1
    assert smoke.tune.grid == {"t_const_ms": [3.0], "lambda2": [0.1]}
    assert (smoke.strategy.epochs, smoke.strategy.warmup_epochs, smoke.strategy.retrain.epochs) == (1, 0, 1)


def test_library_search_reuses_a_running_ray_and_returns_the_run(two_trials: dict, tmp_path: Path) -> None:
    import ray

    two_trials["name"] = "library"
    two_trials["tune"]["grid"] = {"t_const_ms": [1000.0]}
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # a notebook's Ray
    try:
        run = jmsnas.run_experiment(two_trials)  # an experiment as a dict
        assert ray.is_initialized()  # used, and left running
    finally:
        ray.shutdown()
    assert run.dir == (tmp_path / "runs" / "library").resolve()
    assert [t.status for t in run.trials] == ["finished"] and run.best.t_const_ms == 1000.0
    assert (run.dir / run.best.best_dir / "model.pt").is_file()
