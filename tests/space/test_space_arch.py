"""ArchSpec: compact strings, construction from choices, JSON round trip, the built model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jmsnas.errors import ConfigError
from jmsnas.space.arch import ArchSpec, BlockSpec, HeadSpec, StemSpec, build_model
from jmsnas.space.spec import load_search_space

ROOT = Path(__file__).resolve().parents[2]
TINY_1D = ROOT / "search_spaces" / "tiny_1d.yaml"


def _hand_spec() -> ArchSpec:
    return ArchSpec(
        dims=1,
        input_shape=(1, 16),
        num_classes=3,
        stem=StemSpec(channels=4, kernel_size=3, stride=1),
        blocks=(
            BlockSpec.of("mb_k5_e6", 4, 8, 2),
            BlockSpec.of("mb_k3_e3_sc", 8, 8, 1),
            BlockSpec.of("identity", 8, 8, 1),
        ),
        head=HeadSpec(channels=8, dropout=0.1),
    )


def test_compact_string() -> None:
    assert _hand_spec().compact() == "ir_k5_e6_s2_c8 ir_k3_e3_s1_c8_sc id_c8"


def test_from_choices_matches_space() -> None:
    space = load_search_space(TINY_1D)
    spec = ArchSpec.from_choices(space, ["identity", "mb_k7_e6", "mb_k3_e3_sc"], num_classes=5)
    assert spec.choices == ["identity", "mb_k7_e6", "mb_k3_e3_sc"]
    assert spec.compact() == "id_c4 ir_k7_e6_s2_c8 ir_k3_e3_s1_c8_sc"
    assert spec.input_shape == (1, 16) and spec.num_classes == 5
    with pytest.raises(ValueError, match="layer 1.*not allowed"):
        ArchSpec.from_choices(space, ["identity", "identity", "identity"], num_classes=5)
    with pytest.raises(ValueError, match="expected 3 choices"):
        ArchSpec.from_choices(space, ["identity"], num_classes=5)


def test_json_round_trip_gives_identical_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = _hand_spec()
    model = build_model(spec)
    model.train()
    for _ in range(2):  # move BatchNorm running statistics away from their defaults
        model(torch.randn(4, 1, 16))
    path = tmp_path / "arch.json"
    spec.save_json(path)
    loaded = ArchSpec.load_json(path)
    assert loaded == spec
    assert json.loads(path.read_text()) == {**spec.to_dict(), "compact": "ir_k5_e6_s2_c8 ir_k3_e3_s1_c8_sc id_c8"}
    rebuilt = build_model(loaded)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 16)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_layers_are_the_forward_order() -> None:
    model = build_model(_hand_spec()).eval()
    layers = model.layers()
    assert len(layers) == 5 and layers[0] is model.stem and layers[-1] is model.head
    x = torch.randn(2, 1, 16)
    y = x
    for layer in layers:
        y = layer(y)
    assert y.shape == (2, 3)
    torch.testing.assert_close(model(x), y)


def _bad(data: dict, key: str, value: object) -> dict:
    out = json.loads(json.dumps(data))
    target = out
    *parents, last = key.split(".")
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    target[last] = value
    return out


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("blocks.0.out_channels", 16, "blocks[1].in_channels"),
        ("blocks.0.kernel_size", 3, "blocks[0].kernel_size"),
        ("blocks.0.op", "mb_k9_e3", "blocks[0].op"),
        ("blocks.2.stride", 2, "blocks[2].op"),
        ("input_shape", [1, 16, 16], "input_shape"),
        ("head.colour", 1, "head.colour"),
    ],
)
def test_bad_json_names_the_field(tmp_path: Path, key: str, value: object, field: str) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(_bad(_hand_spec().to_dict(), key, value)))
    with pytest.raises(ConfigError) as info:
        ArchSpec.load_json(path)
    assert (info.value.file, info.value.field) == (str(path), field)


def test_unreadable_json(tmp_path: Path) -> None:
    path = tmp_path / "arch.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        ArchSpec.load_json(path)
    with pytest.raises(ConfigError, match="cannot read file"):
        ArchSpec.load_json(tmp_path / "missing.json")
