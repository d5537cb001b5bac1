"""The run directory without Ray: experiment.yaml, run.json, trial.json, outcome.json read back, summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jmsnas.config import load_experiment
from jmsnas.errors import JmsnasError
from jmsnas.report import Summary, write_outputs
from jmsnas.rundir import (
    RunInfo,
    TrialRecord,
    final_metrics,
    finished_outcome,
    prepare_run_dir,
    record_start,
    trial_summary,
)
from jmsnas.strategies.records import Outcome

OUTCOME = {"arch": {"dims": 1}, "compact": "identity", "t_const_ms": 5.0, "predicted_latency_ms": 4.25,
           "feasible": True, "split": {"path": ["a"], "boundaries": [0, 4], "device_ms": {"a": 4.25}, "link_ms": {}},
           "search_val_acc": 0.5, "val_acc": 0.75, "test_acc": 0.625, "search_wall_s": 3.0, "retrain_wall_s": 2.0,
           "seed": 0}


def test_prepare_writes_the_frozen_experiment_and_run_info(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    tiny_experiment["output_dir"] = str(tmp_path / "runs")
    config = load_experiment(write_experiment(tiny_experiment)).config
    run_dir = tmp_path / "runs" / "tiny"
    with pytest.raises(JmsnasError, match="nothing to resume"):
        prepare_run_dir(config, run_dir, resume=True, again="again", tune_state=False)
    prepare_run_dir(config, run_dir, resume=False, again="again", tune_state=False)
    assert load_experiment(run_dir / "experiment.yaml").run_dir == run_dir
    info = RunInfo.load(run_dir / "run.json")
    assert info.seed == 0 and info.resumes is None and "resumes" not in json.loads((run_dir / "run.json").read_text())
    with pytest.raises(JmsnasError, match="already holds a search; continue it with `again`"):
        prepare_run_dir(config, run_dir, resume=False, again="again", tune_state=True)
    for resumes in (1, 2):
        prepare_run_dir(config, run_dir, resume=True, again="again", tune_state=True)
        info = RunInfo.load(run_dir / "run.json")
        assert len(info.resumes) == resumes and info.resumes[-1].seed == 0 and info.date is not None
    (run_dir / "run.json").unlink()  # lost: the resume is still recorded, alone
    prepare_run_dir(config, run_dir, resume=True, again="again", tune_state=True)
    assert list(json.loads((run_dir / "run.json").read_text())) == ["version", "resumes"]


def test_trial_record_counts_the_starts(tmp_path: Path) -> None:
    record_start(tmp_path, "t1", {"t_const_ms": 5.0}, 3, None, reused=False)
    record_start(tmp_path, "t1", {"t_const_ms": 5.0}, 3, "/ckpt", reused=True)
    record = TrialRecord.load(tmp_path / "trial.json")
    assert (record.trial_id, record.overrides, record.seed) == ("t1", {"t_const_ms": 5.0}, 3)
    assert [(s.from_checkpoint, s.reused_outcome) for s in record.starts] == [(None, False), ("/ckpt", True)]
    assert list(json.loads((tmp_path / "trial.json").read_text())) == ["version", "trial_id", "overrides", "seed",
                                                                        "starts"]


def test_finished_outcome_and_final_metrics(tmp_path: Path) -> None:
    assert finished_outcome(tmp_path) is None
    (tmp_path / "outcome.json").write_text('{"arch": {}, "comp')  # torn: the trial runs again
    assert finished_outcome(tmp_path) is None
    Outcome.of(OUTCOME).write(tmp_path / "outcome.json")
    metrics = final_metrics(finished_outcome(tmp_path), tmp_path)
    assert metrics == {"val_acc": 0.75, "test_acc": 0.625, "search_val_acc": 0.5, "predicted_latency_ms": 4.25,
                       "expected_latency_ms": 4.25, "derived_latency_ms": 4.25, "feasible": 1.0, "t_const_ms": 5.0,
                       "artifact_dir": str(tmp_path), "retrained": 1}


def test_trial_summary_per_status(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    config = load_experiment(write_experiment(tiny_experiment)).config
    art = tmp_path / "trials" / "t1"
    art.mkdir(parents=True)
    search = {"trial_id": "t1", "epoch": 2, "val_acc": 0.5, "derived_latency_ms": 6.0, "done": False}
    running = trial_summary(search, None, {"t_const_ms": 6.0}, config, tmp_path)
    assert running["status"] == "incomplete" and running["t_const_ms"] == 6.0
    assert running["search"] == {"epoch": 2, "val_acc": 0.5, "derived_latency_ms": 6.0}
    assert trial_summary({**search, "done": True}, None, {}, config, tmp_path)["status"] == "stopped"
    assert trial_summary(search, "RuntimeError: boom\n", {}, config, tmp_path)["error"] == "RuntimeError: boom"
    record_start(art, "t1", {"lambda2": 0.5}, 0, None, reused=False)
    Outcome.of(OUTCOME).write(art / "outcome.json")
    done = trial_summary({"trial_id": "t1", "done": True, "retrained": 1}, None, {}, config, tmp_path)
    assert done["overrides"] == {"lambda2": 0.5}  # from trial.json when Tune lost the config
    assert (done["status"], done["val_acc"], done["feasible"], done["search"]) == ("finished", 0.75, True, {})
    assert list(done)[-1] == "search_val_acc"


def _finished_trial(root: Path) -> dict:
    art = root / "trials" / "t1"
    art.mkdir(parents=True)
    (art / "arch.json").write_text("{}\n")
    (art / "model.pt").write_bytes(b"w")
    Outcome.of(OUTCOME).write(art / "outcome.json")
    return {"trial_id": "t1", "overrides": {}, "status": "finished", "t_const_ms": 5.0, "seed": 0, "val_acc": 0.75,
            "test_acc": 0.625, "predicted_latency_ms": 4.25, "feasible": True, "compact": "identity",
            "artifact_dir": str(art), "error": None, "search": {}, "search_val_acc": 0.5}


def test_summary_reads_back_typed(tmp_path: Path) -> None:
    returned = write_outputs(tmp_path, "fake", [_finished_trial(tmp_path)])
    text = (tmp_path / "summary.json").read_text()
    assert not text.endswith("\n") and list(json.loads(text))[0] == "version"
    summary = Summary.load(tmp_path / "summary.json")
    assert summary.to_json() == returned == json.loads(text)
    assert summary.overall.trial_id == "t1" and summary.selections[0].best_dir == "best/t5ms"
    assert summary.trials[0].search_val_acc == 0.5


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda d: d.update(winner="t1"), "winner", "unknown key"),
    (lambda d: d["selections"][0].update(trials="four"), "selections[0].trials", "valid integer"),
    (lambda d: d["trials"][0].update(status="lost"), "trials[0].status", "'finished'"),
    (lambda d: d.pop("overall"), "overall", "missing"),
])
def test_a_bad_summary_names_file_and_field(change, field: str, message: str, tmp_path: Path) -> None:
    data = write_outputs(tmp_path, "fake", [_finished_trial(tmp_path)])
    change(data)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    with pytest.raises(JmsnasError, match=message) as info:
        Summary.load(path)
    assert info.value.file == str(path) and info.value.field == field


def test_a_missing_summary_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(JmsnasError, match="cannot read") as info:
        Summary.load(tmp_path / "summary.json")
    assert info.value.file == str(tmp_path / "summary.json")
