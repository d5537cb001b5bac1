"""manifest.json: plain JSON a stranger can read, validated on load; a bad one names the file and the field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from jmsnas.errors import JmsnasError
from jmsnas.export.manifest import MANIFEST, Manifest
from jmsnas.export.split import split_graph, trace_units, unit_output_bytes
from jmsnas.export.writer import export_bundle
from jmsnas.plan.planners import plan_sequential
from jmsnas.runtime.bundle import BundleError, load_bundle, read_manifest, run_bundle, verify_bundle
from jmsnas.topology import Device, Link, build_topology


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """Three linear layers over two devices, exported once (ONNX export takes seconds)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    topology = build_topology("chain", [Device("a"), Device("b")], [Link("a", "b", 100.0, 1.0)])
    plan = plan_sequential({"a": [1.0, 1.0, 90.0], "b": [90.0, 90.0, 1.0]}, unit_output_bytes(model, x), 16.0,
                           topology)
    assert plan.boundaries() == [0, 2, 3]
    out = tmp_path_factory.mktemp("tiny") / "bundle"
    export_bundle(split_graph(trace_units(model), plan.boundaries()), plan, x, out)
    return model, out


def _edited(bundle: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``bundle`` whose manifest is edited by ``edit``; returns the copy's folder."""
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    data = json.loads((copy / MANIFEST).read_text())
    edit(data)
    (copy / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return copy


def test_manifest_is_plain_json_and_round_trips(tiny_bundle: tuple[nn.Module, Path]) -> None:
    model, bundle = tiny_bundle
    text = (bundle / MANIFEST).read_text()
    assert text.startswith('{\n  "format": "jmsnas-bundle",\n  "version": 1,') and text.endswith("}\n")
    raw = json.loads(text)
    manifest = read_manifest(bundle)
    assert manifest == Manifest.load(bundle / MANIFEST)
    assert manifest.to_dict() == raw  # the typed manifest says what the file says, no key added or dropped
    assert manifest.parts[1].decoder is not None and manifest.parts[1].decoder.cut == 0
    assert manifest.parts[0].decoder is None and manifest.parts[1].encoder is None
    assert manifest.plan.boundaries() == [0, 2, 3] and manifest.exits is None
    loaded = load_bundle(bundle)
    assert loaded.manifest == raw and loaded.spec == manifest
    x = torch.randn(5, 4)
    (logits,) = run_bundle(bundle, x, "onnx")
    assert torch.allclose(logits, model(x), atol=1e-4)
    assert verify_bundle(bundle, model, [x]).max_abs_diff <= 1e-5


def test_a_manifest_written_before_the_version_key_loads(tiny_bundle: tuple[nn.Module, Path], tmp_path: Path) -> None:
    copy = _edited(tiny_bundle[1], tmp_path, lambda d: (d.pop("version"), d["plan"].pop("version")))
    bundle = load_bundle(copy)
    assert bundle.spec.version == 1 and bundle.spec.plan.version == 1


@pytest.mark.parametrize(
    ("edit", "field", "says"),
    [
        (lambda d: d["parts"][0].update(colour="red"), "parts[0].colour", "unknown key"),
        (lambda d: d.update(signature="x"), "signature", "unknown key"),
        (lambda d: d["parts"][1]["files"]["onnx"].update(size=3), "parts[1].files.onnx.size", "unknown key"),
        (lambda d: d["parts"][0].update(onnx_max_abs_diff="tiny"), "parts[0].onnx_max_abs_diff", "valid number"),
        (lambda d: d["parts"][1]["inputs"][0].update(shape="2x8"), "parts[1].inputs[0].shape", "valid list"),
        (lambda d: d["parts"][1]["decoder"].update(cut="first"), "parts[1].decoder.cut", "valid integer"),
        (lambda d: d["plan"]["cuts"][0].update(payload_bytes="lots"), "plan.cuts[0].payload_bytes", "valid number"),
        (lambda d: d["plan"]["cuts"][0].update(colour="red"), "plan.cuts[0].colour", "unknown key"),
        (lambda d: d["parts"][0]["files"].pop("onnx"), "parts[0].files.onnx", "missing"),
        (lambda d: d.update(format="some-other-bundle"), "format", "jmsnas-bundle"),
        (lambda d: d.pop("format"), "format", "missing"),
    ],
)
def test_a_bad_manifest_names_the_file_and_the_field(tiny_bundle: tuple[nn.Module, Path], tmp_path: Path,
                                                     edit: Callable[[dict[str, Any]], None], field: str,
                                                     says: str) -> None:
    copy = _edited(tiny_bundle[1], tmp_path, edit)
    path = copy / MANIFEST
    for load in (lambda: load_bundle(copy), lambda: read_manifest(copy), lambda: Manifest.load(path)):
        with pytest.raises(BundleError) as info:
            load()
        assert isinstance(info.value, JmsnasError)
        assert info.value.file == str(path) and info.value.field == field
        assert str(info.value).startswith(f"{path}: {field}: ") and says in str(info.value)


def test_a_missing_or_broken_manifest_names_the_file(tiny_bundle: tuple[nn.Module, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bundle[1], tmp_path / "copy"))
    (copy / MANIFEST).write_text('{"format": "jmsnas-bundle", ')
    with pytest.raises(BundleError, match="invalid JSON at line 1") as info:
        load_bundle(copy)
    assert info.value.file == str(copy / MANIFEST)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="cannot read the file") as info:
        run_bundle(copy, torch.randn(1, 4))
    assert str(info.value).startswith(f"{copy / MANIFEST}: ")
