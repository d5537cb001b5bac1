"""The search's artifact files: one model each, strict, versioned, written atomically, errors naming file and field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from jmsnas.errors import JmsnasError
from jmsnas.strategies.records import ClimbRecord, ClimbState, Outcome, RandomRecord, TeacherRecord
from jmsnas.strategies.run import SearchOutcome

OUTCOME = {"arch": {"dims": 1}, "compact": "mb_k3_e3 identity", "t_const_ms": 5.0, "predicted_latency_ms": 4.25,
           "feasible": True, "split": {"path": ["a", "c"], "boundaries": [0, 2, 4], "device_ms": {"a": 1.0, "c": 0.5},
                                       "link_ms": {"a->c": 2.75}},
           "search_val_acc": 0.5, "val_acc": 0.75, "test_acc": 0.625, "search_wall_s": 3.0, "retrain_wall_s": 2.0,
           "seed": 0}
START = {"iteration": 0, "start": "identity", "score": 0.9, "val_acc": 0.5}
STEP = {"iteration": 1, "accepted": 0, "dropped": {"latency": 1, "memory": 0}, "pid": 7, "acceptance": "fair",
        "parent_score_before": 0.9, "parent": {"score": 0.85, "val_acc": 0.5, "wall_s": 1.0, "pid": 8},
        "children": [{"morphs": ["deepen@1:mb_k3_e3_sc"], "compact": "identity mb", "latency_ms": 2.0, "score": 0.8,
                      "val_acc": 0.625, "wall_s": 1.0, "pid": 9}]}
STATE = {"iteration": 1, "arch": {"dims": 1}, "compact": "identity mb", "score": 0.8, "val_acc": 0.625,
         "latency_ms": 2.0, "wall_s": 4.5, "history": [START, STEP], "weights": "parent-1.pt"}
TEACHER = {"key": {"seed": 0, "input_shape": [1, 40]}, "model": "wide", "params": 1234, "val_acc": 0.875,
           "test_acc": 0.8, "train_wall_s": 9.5}
RANDOM = {"seed": 0, "t_const_ms": 5.0, "rejected": {"latency": 3, "memory": 0, "duplicate": 1},
          "fastest_drawn_ms": 1.5, "drawn": [{"arch": {"dims": 1}, "compact": "identity", "latency_ms": 1.5}],
          "trained": [{"index": 0, "compact": "identity", "latency_ms": 1.5, "val_acc": 0.5, "val_loss": 1.25,
                       "wall_s": 0.5}], "best": 0, "stopped": None, "wall_s": 0.5}
CLIMB = {"teacher": TEACHER, **{k: v for k, v in STATE.items() if k != "weights"}}


def test_outcome_file_holds_the_search_outcome() -> None:
    assert [f.name for f in dataclasses.fields(SearchOutcome)] == [n for n in Outcome.model_fields if n != "version"]


@pytest.mark.parametrize(("model", "data"), [(Outcome, OUTCOME), (ClimbState, STATE), (ClimbRecord, CLIMB),
                                             (ClimbRecord, {**CLIMB, "teacher": None}),
                                             (ClimbRecord, {**CLIMB, "teacher": {"checkpoint": "t.pt", "model": "x"}}),
                                             (TeacherRecord, TEACHER), (RandomRecord, RANDOM)])
def test_a_file_keeps_its_keys_and_order_with_version_first(model, data: dict, tmp_path: Path) -> None:
    path = tmp_path / "artifact.json"
    model.of(data).write(path)
    text = path.read_text()
    assert text == json.dumps({"version": 1, **data}, indent=2)  # same bytes as before, version added, no newline
    assert list(json.loads(text)) == ["version", *data]
    assert model.load(path).data() == data and not list(tmp_path.glob("*.tmp"))
    model.of(data).write(path, newline=True)
    assert path.read_text() == text + "\n"


def test_files_written_before_the_version_load(tmp_path: Path) -> None:
    (tmp_path / "outcome.json").write_text(json.dumps(OUTCOME, indent=2))
    outcome = Outcome.load(tmp_path / "outcome.json")
    assert outcome.version == 1 and outcome.split.boundaries == [0, 2, 4] and outcome.feasible is True


def test_history_entries_are_typed(tmp_path: Path) -> None:
    state = ClimbState.of(STATE)
    assert [type(h).__name__ for h in state.history] == ["StartStep", "ClimbStep"]
    assert state.history[1].children[0].morphs == ["deepen@1:mb_k3_e3_sc"]


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda d: d.update(speedup=2.0), "speedup", "unknown key"),
    (lambda d: d.update(seed="zero"), "seed", "valid integer"),
    (lambda d: d["split"].update(boundaries=[0, "two", 4]), "split.boundaries[1]", "valid integer"),
    (lambda d: d.pop("test_acc"), "test_acc", "missing"),
])
def test_a_bad_outcome_names_file_and_field(change, field: str, message: str, tmp_path: Path) -> None:
    data = json.loads(json.dumps(OUTCOME))
    change(data)
    path = tmp_path / "outcome.json"
    path.write_text(json.dumps(data))
    with pytest.raises(JmsnasError, match=message) as info:
        Outcome.load(path)
    assert info.value.file == str(path) and info.value.field == field
    assert str(info.value).startswith(f"{path}: {field}: ")


def test_a_missing_or_broken_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(JmsnasError, match="cannot read") as info:
        Outcome.load(tmp_path / "outcome.json")
    assert info.value.file == str(tmp_path / "outcome.json")
    (tmp_path / "outcome.json").write_text('{"arch": ')
    with pytest.raises(JmsnasError, match="invalid JSON"):
        Outcome.load(tmp_path / "outcome.json")


def test_a_bad_climb_entry_names_its_kind_and_field(tmp_path: Path) -> None:
    data = json.loads(json.dumps(STATE))
    data["history"][1]["children"][0]["score"] = "low"
    (tmp_path / "state.json").write_text(json.dumps(data))
    with pytest.raises(JmsnasError) as info:
        ClimbState.load(tmp_path / "state.json")
    assert info.value.field == "history[1].climb.children[0].score"
