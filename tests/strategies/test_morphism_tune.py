"""The morphism strategy under `python -m jmsnas.search`: a Ray Tune trial whose children are Ray tasks."""

from __future__ import annotations

import json
from pathlib import Path

from jmsnas.search import main
from jmsnas.space.arch import ArchSpec


def test_search_runs_the_morphism_strategy(tiny_experiment: dict, write_experiment, tmp_path: Path, capsys) -> None:
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["output_dir"] = str(tmp_path / "runs")
    tiny_experiment["strategy"] = {"name": "morphism", "t_const_ms": 1000.0, "iterations": 1, "children": 2,
                                   "child_epochs": 1, "teacher": {"epochs": 1}, "retrain": {"epochs": 1},
                                   "parallel_children": 1}
    assert main([str(write_experiment(tiny_experiment))]) == 0
    assert "morphism (KD at T=20" in capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    for name in ("summary.json", "report.md", "arch.json", "best/t1000ms/model.pt", "teacher/teacher.pt"):
        assert (run_dir / name).is_file(), name
    (trial,) = json.loads((run_dir / "summary.json").read_text())["trials"]
    assert trial["status"] == "finished" and trial["feasible"] and trial["t_const_ms"] == 1000.0
    art = Path(trial["artifact_dir"])
    assert ArchSpec.load_json(art / "arch.json").compact() == trial["compact"]
    climb = json.loads((art / "climb.json").read_text())
    (iteration,) = climb["history"][1:]
    pids = {c["pid"] for c in iteration["children"]}
    assert len(iteration["children"]) == 2 and iteration["pid"] not in pids  # trained as Ray tasks, elsewhere
    assert json.loads((run_dir / "arch.json").read_text())["compact"] == trial["compact"]
