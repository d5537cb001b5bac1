"""Ray start-up: a fresh local Ray whatever a previous cluster left behind, Ray's own CPU count, --address joins."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from jmsnas import tune
from jmsnas.errors import ConfigError


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.init`` recorded instead of run (no Ray is started)."""
    calls: list[dict] = []
    monkeypatch.setattr(tune.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(tune.ray, "cluster_resources", lambda: {"CPU": 3.0})
    monkeypatch.setattr(tune.ray, "init", lambda **kw: calls.append(kw) or SimpleNamespace(dashboard_url=None))
    return calls


def test_local_start_is_fresh_and_keeps_rays_cpu_detection(fake_ray) -> None:
    started = tune.start_ray(None)
    assert fake_ray == [{"address": "local", "include_dashboard": True}]  # no num_cpus: Ray detects them
    assert started.owned and started.lines[0] == "ray         started on this machine, 3 CPUs"
    tune.start_ray(None, num_cpus=2)
    assert fake_ray[-1] == {"address": "local", "include_dashboard": True, "num_cpus": 2}


def test_address_joins_and_refuses_num_cpus(fake_ray) -> None:
    assert tune.start_ray("10.0.0.1:6379").owned
    assert fake_ray == [{"address": "10.0.0.1:6379"}]
    with pytest.raises(ConfigError) as exc:
        tune.start_ray("10.0.0.1:6379", num_cpus=2)
    assert exc.value.field == "--num-cpus"


def test_a_running_ray_is_reused_and_left_running(fake_ray, monkeypatch) -> None:
    monkeypatch.setattr(tune.ray, "is_initialized", lambda: True)
    started = tune.start_ray(None)
    assert fake_ray == [] and not started.owned


def test_a_trial_needing_more_gpus_than_ray_has_is_refused(fake_ray, tiny_experiment, write_experiment) -> None:
    from jmsnas.config import load_experiment

    tiny_experiment["trainer"] = {"accelerator": "gpu"}
    tiny_experiment["tune"] = {"resources_per_trial": {"cpu": 1, "gpu": 1}}
    exp = load_experiment(write_experiment(tiny_experiment))
    with pytest.raises(ConfigError, match="one trial needs 1 GPUs, Ray has 0") as exc:
        tune._check_fits_cluster(exp.config, exp.path)  # the fake Ray has 3 CPUs and no GPU
    assert exc.value.field == "tune.resources_per_trial.gpu"
    tiny_experiment["tune"]["resources_per_trial"]["cpu"] = 4
    exp = load_experiment(write_experiment(tiny_experiment))
    with pytest.raises(ConfigError, match="one trial needs 4 CPUs, Ray has 3"):
        tune._check_fits_cluster(exp.config, exp.path)


def test_search_runs_while_a_stale_default_address_points_at_a_dead_cluster(tiny_experiment, write_experiment,
                                                                           tmp_path: Path) -> None:
    # Ray's temp dir is a fresh short folder (Unix socket paths are short), so nothing here reads or
    # touches a real cluster's files; its default-address file names a cluster that is not running.
    ray_tmp = Path(tempfile.mkdtemp(prefix="jr", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # discard port: nothing listens
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(RAY_TMPDIR=str(ray_tmp), TMPDIR=str(ray_tmp))
    seen = subprocess.run([sys.executable, "-c", "from ray._private.services import canonicalize_bootstrap_address "
                           "as c; print(c(None))"], env=env, capture_output=True, text=True, timeout=120)
    assert seen.stdout.strip().endswith(":9"), seen.stderr  # a bare ray.init() would join it

    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["output_dir"] = str(tmp_path / "runs")
    tiny_experiment["strategy"].update(epochs=1, warmup_epochs=0, retrain={"epochs": 1})
    path = write_experiment(tiny_experiment)
    proc = subprocess.Popen([sys.executable, "-m", "jmsnas", "search", str(path), "--num-cpus", "2"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-3000:]
    assert "ray         started on this machine, 2 CPUs" in out
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["finished"]
