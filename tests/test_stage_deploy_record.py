"""deploy.json as a typed record: a round trip keeps every value; a bad file names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jmsnas.errors import JmsnasError
from jmsnas.stages.deploy_record import DeployRecord


def _record() -> dict:
    return {"arch": "stem|m3e1|head", "plan": "plan.json", "predicted_latency_ms": 12.5, "devices": ["a", "b"],
            "boundaries": [0, 2, 5], "cuts": [{"src": "a", "dst": "b", "compressor": "none", "payload_bytes": 160.0,
                                              "link_ms": 1.28}],
            "mean_latency_ms": None, "input_bytes": 160.0, "test_acc_unsplit": 0.9, "test_acc_split": 0.9,
            "acc_change_pp": 0.0, "notes": [], "baselines": [{"name": "device-only", "latency_ms": 20.0}]}


def test_round_trip_keeps_the_file_and_leaves_out_stages_that_did_not_run(tmp_path: Path) -> None:
    data = _record()
    record = DeployRecord.model_validate(data)
    record.save(tmp_path / "deploy.json")
    written = json.loads((tmp_path / "deploy.json").read_text())
    assert written == {**data, "version": 1}  # no exits / verify / bundle keys, mean latency kept as null
    assert DeployRecord.load(tmp_path / "deploy.json") == record


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.update(surprise=1), "surprise"),
    (lambda d: d["cuts"][0].update(payload_bytes="many"), "cuts[0].payload_bytes"),
    (lambda d: d.pop("devices"), "devices"),
])
def test_a_bad_file_names_itself_and_the_field(tmp_path: Path, change, field: str) -> None:
    data = _record()
    change(data)
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(JmsnasError) as err:
        DeployRecord.load(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(JmsnasError, match="deploy.json"):
        DeployRecord.load(tmp_path / "deploy.json")
