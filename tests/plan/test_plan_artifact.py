"""plan.json: written atomically with a version key, read back typed; a bad file names the file and the field."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from jmsnas.errors import ArtifactError, JmsnasError
from jmsnas.plan.artifact import CutPlan, DeploymentPlan, DeviceSegment, ExitPlan, TensorSpec


def _plan() -> DeploymentPlan:
    segments = (DeviceSegment("a", "main", 0, 2, 1.5), DeviceSegment("b", "main", 2, 5, 2.25))
    cut = CutPlan("a", "b", 128.0, 0.5, "quantize", {"bits": 8, "scale": [0.1]}, (TensorSpec("x", (1, 32)),))
    plan = DeploymentPlan("chain", segments, (cut,), 4.25)
    return plan.with_exits([ExitPlan("a", 1, 0.9, head_macs=10, latency_ms=1.75, termination_rate=0.5)],
                           mean_latency_ms=3.0)


def _written(tmp_path: Path, edit) -> Path:
    """plan.json of ``_plan()`` with ``edit(data)`` applied to its JSON."""
    path = tmp_path / "plan.json"
    _plan().to_json(path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))
    return path


def test_round_trip_gives_an_equal_plan_and_keeps_the_format(tmp_path: Path) -> None:
    plan = _plan()
    path = tmp_path / "plan.json"
    plan.to_json(path)
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "topology_kind": "chain",')
    assert json.loads(text)["version"] == 1
    assert DeploymentPlan.load(path) == plan == DeploymentPlan.from_json(path)
    assert DeploymentPlan.from_dict(plan.to_dict()) == plan
    assert not list(tmp_path.glob("*.tmp"))


def test_a_plan_written_before_the_version_key_loads(tmp_path: Path) -> None:
    path = _written(tmp_path, lambda d: d.pop("version"))
    assert DeploymentPlan.load(path) == _plan()


def test_loaded_values_are_typed(tmp_path: Path) -> None:
    loaded = DeploymentPlan.load(_written(tmp_path, lambda d: d["cuts"][0].update(payload_bytes=128)))
    assert isinstance(loaded.cuts[0].payload_bytes, float)
    assert loaded.cuts[0].tensors == (TensorSpec("x", (1, 32)),)
    assert isinstance(loaded.segments, tuple) and isinstance(loaded.cuts[0].tensors[0].shape, tuple)
    assert replace(loaded, total_latency_ms=1.0).total_latency_ms == 1.0  # still a dataclass


@pytest.mark.parametrize(
    ("edit", "field", "says"),
    [
        (lambda d: d["cuts"][0].update(payload_bytes="lots"), "cuts[0].payload_bytes", "valid number"),
        (lambda d: d["cuts"][0].update(colour="red"), "cuts[0].colour", "unknown key"),
        (lambda d: d.update(extra=1), "extra", "unknown key"),
        (lambda d: d["segments"][1].pop("stop"), "segments[1].stop", "missing"),
        (lambda d: d["cuts"][0]["tensors"][0].update(shape=[1, "x"]), "cuts[0].tensors[0].shape[1]", "valid integer"),
        (lambda d: d["exits"][0].update(threshold=None), "exits[0].threshold", "valid number"),
        (lambda d: d.update(segments=3), "segments", "valid tuple"),
    ],
)
def test_a_bad_plan_names_the_file_and_the_field(tmp_path: Path, edit, field: str, says: str) -> None:
    path = _written(tmp_path, edit)
    with pytest.raises(ArtifactError) as info:
        DeploymentPlan.load(path)
    assert isinstance(info.value, JmsnasError)
    assert info.value.file == str(path) and info.value.field == field
    assert str(info.value).startswith(f"{path}: {field}: ") and says in str(info.value)


def test_a_missing_or_broken_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "plan.json"
    with pytest.raises(ArtifactError, match="cannot read the file") as info:
        DeploymentPlan.from_json(missing)
    assert str(info.value).startswith(f"{missing}: ")
    broken = tmp_path / "plan.json"
    broken.write_text('{"topology_kind": ')
    with pytest.raises(ArtifactError, match="invalid JSON at line 1") as info:
        DeploymentPlan.load(broken)
    assert info.value.file == str(broken)


def test_from_dict_refuses_an_unknown_key() -> None:
    data = _plan().to_dict()
    data["segments"] = [{**data["segments"][0], "gpu": True}, *data["segments"][1:]]
    with pytest.raises(ArtifactError) as info:
        DeploymentPlan.from_dict(data)
    assert info.value.field == "segments[0].gpu"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plan.json"
    _plan().to_json(path)
    before = path.read_bytes()

    def half_then_fail(self: Path, text: str) -> int:
        self.write_bytes(text[:20].encode())
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        replace(_plan(), total_latency_ms=9.0).to_json(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
