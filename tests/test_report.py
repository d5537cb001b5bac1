"""The choice per T_const, the Pareto front and the files of a report, on hand-made trials (no Ray)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from jmsnas.report import (
    constraint_dir,
    overall_choice,
    pareto_front,
    select_per_constraint,
    write_outputs,
)


def _dominated(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """q beats p: no slower, no less accurate, and strictly better on one."""
    return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])


def test_pareto_front_hand_made() -> None:
    points = [(10.0, 0.80), (5.0, 0.70), (20.0, 0.80), (7.0, 0.60), (30.0, 0.90), (5.0, 0.65), (1.0, 0.10)]
    # (20, .8) loses to (10, .8); (7, .6) and (5, .65) lose to (5, .7)
    assert pareto_front(points) == [6, 1, 0, 4]


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(50):
        points = [(float(rng.randint(1, 8)), rng.randint(0, 8) / 8) for _ in range(rng.randint(1, 12))]
        front = pareto_front(points)
        unique = {points[i] for i in front}
        expected = {p for p in points if not any(_dominated(p, q) for q in points)}
        assert unique == expected and len(unique) == len(front)  # each non-dominated point once
        assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)
        for a, b in itertools.pairwise(front):  # along the front accuracy rises with latency
            assert points[a][1] < points[b][1]


def _trial(trial_id: str, t_const: float, latency: float | None, val: float | None, test: float | None = None,
           status: str = "finished") -> dict:
    return {"trial_id": trial_id, "overrides": {"t_const_ms": t_const}, "status": status, "t_const_ms": t_const,
            "seed": 0, "val_acc": val, "test_acc": test if test is not None else val, "predicted_latency_ms": latency,
            "feasible": None if latency is None else latency <= t_const, "compact": f"net_{trial_id}",
            "artifact_dir": f"/nowhere/{trial_id}", "search": {}, "error": None}


TRIALS = [
    _trial("a", 10.0, 12.0, 0.95),            # most accurate, but too slow for its constraint
    _trial("b", 10.0, 9.0, 0.80, test=0.70),  # feasible
    _trial("c", 10.0, 8.0, 0.85, test=0.60),  # feasible and more accurate: chosen
    _trial("d", 10.0, None, None, status="stopped"),
    _trial("e", 5.0, 7.0, 0.90),              # infeasible constraint: nothing meets 5 ms
    _trial("f", 5.0, 6.5, 0.70),              # ... the fastest reached 6.5 ms
    _trial("g", 40.0, None, None, status="error"),
    {**_trial("i", 40.0, None, None, status="stopped"), "search": {"derived_latency_ms": 33.0}},
    _trial("h", 20.0, 19.0, 0.85, test=0.90),  # ties c on accuracy, slower: c wins overall
]


def test_selection_per_constraint() -> None:
    sel = {s["t_const_ms"]: s for s in select_per_constraint(TRIALS)}
    assert sorted(sel) == [5.0, 10.0, 20.0, 40.0]
    chosen = sel[10.0]
    assert chosen["feasible"] and chosen["trial_id"] == "c"
    assert (chosen["val_acc"], chosen["test_acc"], chosen["predicted_latency_ms"]) == (0.85, 0.60, 8.0)
    assert chosen["best_dir"] == "best/t10ms" and (chosen["trials"], chosen["finished"]) == (4, 3)
    infeasible = sel[5.0]  # reported, never hidden, with the lowest latency reached
    assert not infeasible["feasible"] and infeasible["trial_id"] is None
    assert infeasible["lowest_latency_ms"] == 6.5 and infeasible["lowest_latency_trial"] == "f"
    assert "infeasible" in infeasible["note"]
    none_finished = sel[40.0]
    assert not none_finished["feasible"] and none_finished["lowest_latency_ms"] is None
    assert "during search needed 33 ms" in none_finished["note"]
    assert overall_choice(list(sel.values()))["trial_id"] == "c"
    assert overall_choice([sel[5.0], sel[40.0]]) is None


def test_selection_ignores_test_accuracy() -> None:
    trials = [_trial("x", 10.0, 5.0, 0.80, test=0.99), _trial("y", 10.0, 6.0, 0.81, test=0.50)]
    assert select_per_constraint(trials)[0]["trial_id"] == "y"


@pytest.mark.parametrize(("t", "name"), [(20.0, "t20ms"), (2.5, "t2.5ms"), (1000.0, "t1000ms")])
def test_constraint_dir(t: float, name: str) -> None:
    assert constraint_dir(t) == name


def _fake_artifacts(root: Path, trial: dict) -> dict:
    art = root / "trials" / trial["trial_id"]
    art.mkdir(parents=True)
    (art / "arch.json").write_text(json.dumps({"net": trial["trial_id"]}))
    (art / "model.pt").write_bytes(b"weights")
    outcome = {"arch": {"net": trial["trial_id"]}, "compact": trial["compact"], "t_const_ms": trial["t_const_ms"],
               "predicted_latency_ms": trial["predicted_latency_ms"], "feasible": trial["feasible"],
               "split": {"path": ["a", "b"], "boundaries": [0, 2, 3], "device_ms": {"a": 1.0, "b": 2.0},
                         "link_ms": {"a->b": trial["predicted_latency_ms"] - 3.0}},
               "search_val_acc": trial["val_acc"], "val_acc": trial["val_acc"], "test_acc": trial["test_acc"],
               "search_wall_s": 1.0, "retrain_wall_s": 1.0, "seed": trial["seed"]}  # a complete outcome.json
    (art / "outcome.json").write_text(json.dumps(outcome))
    return {**trial, "artifact_dir": str(art)}


def test_write_outputs(tmp_path: Path) -> None:
    trials = [_fake_artifacts(tmp_path, t) if t["status"] == "finished" else t for t in TRIALS]
    summary = write_outputs(tmp_path, "fake", trials)
    for name in ("summary.json", "report.md", "pareto.png", "latency_breakdown.png", "arch.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "arch.json").read_text()) == {"net": "c"}
    for t_const, trial_id in ((10.0, "c"), (20.0, "h")):
        best = tmp_path / "best" / constraint_dir(t_const)
        assert json.loads((best / "arch.json").read_text()) == {"net": trial_id}
        assert (best / "model.pt").read_bytes() == b"weights" and (best / "outcome.json").is_file()
    assert not (tmp_path / "best" / "t5ms").exists()  # an infeasible constraint gets no network
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert len(summary["trials"]) == 9 and summary["overall"]["trial_id"] == "c"
    text = (tmp_path / "report.md").read_text()
    assert "**infeasible**" in text and "lowest reached: 6.5" in text and "](pareto.png)" in text


def test_write_outputs_without_feasible_network(tmp_path: Path) -> None:
    (tmp_path / "arch.json").write_text("{}")  # left from an earlier report
    trials = [_fake_artifacts(tmp_path, t) for t in TRIALS if t["t_const_ms"] == 5.0]
    summary = write_outputs(tmp_path, "fake", trials)
    assert summary["overall"] is None and not (tmp_path / "arch.json").exists()
    assert (tmp_path / "pareto.png").is_file() and not (tmp_path / "latency_breakdown.png").exists()
    assert "No constraint was met" in (tmp_path / "report.md").read_text()


def test_load_run_reads_back_the_summary(tmp_path: Path) -> None:
    from jmsnas import load_run
    from jmsnas.errors import ArtifactError
    from jmsnas.results import TABLE_COLUMNS

    trials = [_fake_artifacts(tmp_path, t) if t["status"] == "finished" else t for t in TRIALS]
    summary = write_outputs(tmp_path, "fake", trials)
    run = load_run(tmp_path)
    assert [t.trial_id for t in run.trials] == [t["trial_id"] for t in TRIALS]
    assert [(r["status"], r["val_acc"], r["t_const_ms"]) for r in run.rows()] == [
        (t["status"], t["val_acc"], t["t_const_ms"]) for t in TRIALS]
    assert all(list(r) == list(TABLE_COLUMNS) for r in run.rows())
    assert run.best.trial_id == "c" == summary["overall"]["trial_id"]
    assert run.choice(20.0).trial_id == "h" and not run.choice(5.0).feasible
    assert run.outcome("c").compact == next(t["compact"] for t in TRIALS if t["trial_id"] == "c")
    with pytest.raises(ArtifactError, match="not a finished run"):
        load_run(tmp_path / "trials")


def test_report_command_prints_the_choices(tmp_path: Path, capsys) -> None:
    from jmsnas.cli import main

    trials = [_fake_artifacts(tmp_path, t) if t["status"] == "finished" else t for t in TRIALS]
    write_outputs(tmp_path, "fake", trials)
    before = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file())
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"run         {tmp_path.resolve()} (fake): 9 trial(s)" in out
    assert "overall     trial c (T_const 10 ms)" in out
    assert main(["report", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall"]["trial_id"] == "c" and [c["t_const_ms"] for c in data["choices"]] == [5.0, 10.0, 20.0, 40.0]
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()) == before  # nothing written
    assert main(["report", str(tmp_path / "trials")]) == 2
    assert "not a finished run" in capsys.readouterr().err
