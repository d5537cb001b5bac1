"""Search-space files: shipped files load, bad files fail naming the field, layer enumeration."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Literal

import pydantic
import pytest

from jmsnas.errors import ConfigError
from jmsnas.space.spec import SearchSpaceConfig, load_search_space
from jmsnas.validation import describe_validation_error, pydantic_field_path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))

GOOD = """\
name: t
dims: 1
input_shape: [1, 16]
stem: {channels: 4, kernel_size: 3, stride: 1}
stages:
  - {channels: 4, stride: 1, layers: 1}
  - {channels: 8, stride: 2, layers: 2}
head: {channels: 8}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_shipped_files_exist() -> None:
    assert {p.name for p in SHIPPED} >= {"mbconv13.yaml", "mbconv13_1d.yaml", "tiny_1d.yaml", "tiny_2d.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_load(path: Path) -> None:
    space = load_search_space(path)
    slots = space.layers()
    assert len(slots) == space.num_layers > 0
    assert slots[0].in_channels == space.config.stem.channels
    for prev, cur in pairwise(slots):  # a branch starts from the root's output, not the previous branch's
        if cur.part == prev.part or not cur.part.startswith("branch"):
            if cur.part == "post" and prev.part != "post":
                join = space.join_shape()
                assert (cur.in_channels, cur.in_size) == (join[0], join[1:])
            else:
                assert (cur.in_channels, cur.in_size) == (prev.out_channels, prev.out_size)
    assert SearchSpaceConfig.model_validate(space.config.model_dump()) == space.config


def test_mnist1d_layer_table() -> None:
    space = load_search_space(ROOT / "search_spaces" / "mbconv13_1d.yaml")
    table = [
        (s.in_channels, s.out_channels, s.stride, s.in_size, s.out_size, len(s.candidates)) for s in space.layers()
    ]
    assert table == [  # by hand from the file: stem keeps L=40; stride-2 stages halve it
        (16, 16, 1, (40,), (40,), 13),
        (16, 24, 2, (40,), (20,), 6),
        (24, 24, 1, (20,), (20,), 13),
        (24, 32, 2, (20,), (10,), 6),
        (32, 32, 1, (10,), (10,), 13),
        (32, 48, 1, (10,), (10,), 6),
    ]
    assert space.head_input_shape() == (48, 10)
    assert space.layers((1, 7))[-1].out_size == (2,)  # 7 -> 4 -> 2


def test_candidate_subset_keeps_config_order(tmp_path: Path) -> None:
    space = load_search_space(_write(tmp_path, GOOD + "candidates: [identity, mb_k5_e3_sc, mb_k3_e6]\n"))
    assert [s.candidates for s in space.layers()] == [
        ("identity", "mb_k5_e3_sc", "mb_k3_e6"),
        ("mb_k3_e6",),
        ("identity", "mb_k5_e3_sc", "mb_k3_e6"),
    ]


BAD = [
    ("unknown top key", GOOD + "width: 3\n", "width", "valid keys"),
    ("unknown stage key", GOOD.replace("layers: 1}", "layers: 1, width: 2}"), "stages[0].width", "valid keys"),
    ("bad stride", GOOD.replace("stride: 2", "stride: 3"), "stages[1].stride", "1 or 2"),
    ("wrong type", GOOD.replace("channels: 8, stride", "channels: abc, stride"), "stages[1].channels", "integer"),
    ("even kernel", GOOD.replace("kernel_size: 3", "kernel_size: 4"), "stem.kernel_size", "odd"),
    ("missing head", GOOD.replace("head: {channels: 8}\n", ""), "head", "missing"),
    ("bad dims", GOOD.replace("dims: 1", "dims: 3"), "dims", "1 or 2"),
    ("shape vs dims", GOOD.replace("dims: 1", "dims: 2"), "input_shape", "[C, H, W]"),
    ("unknown candidate", GOOD + "candidates: [mb_k3_e3, mb_k9_e3]\n", "candidates[1]", "mb_k7_e6_sc"),
    ("duplicate candidate", GOOD + "candidates: [identity, identity]\n", "candidates[1]", "twice"),
    ("no fitting candidate", GOOD + "candidates: [identity, mb_k3_e3_sc]\n", "candidates", "without _sc"),
    ("empty stages", GOOD.split("stages:")[0] + "stages: []\nhead: {channels: 8}\n", "stages", "at least 1"),
    ("dropout range", GOOD.replace("{channels: 8}", "{channels: 8, dropout: 1.5}"), "head.dropout", "less than 1"),
]


@pytest.mark.parametrize(("text", "field", "hint"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_files_name_the_field(tmp_path: Path, text: str, field: str, hint: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    assert info.value.field == field
    assert info.value.file == str(path)
    assert hint in info.value.message
    assert str(info.value).startswith(f"{path}: {field}: ")


@pytest.mark.parametrize(
    ("text", "hint"),
    [("name: [unclosed\n", "invalid YAML at line"), ("- a\n- b\n", "mapping"), ("", "mapping")],
)
def test_unreadable_files(tmp_path: Path, text: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="invalid YAML|mapping") as info:
        load_search_space(_write(tmp_path, text))
    assert hint in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_search_space(tmp_path / "nope.yaml")


def test_field_path_helpers() -> None:
    assert pydantic_field_path(("a", 2, "b", 0, 1)) == "a[2].b[0][1]"
    assert pydantic_field_path((0, "x")) == "[0].x"
    assert pydantic_field_path(()) == ""
    with pytest.raises(pydantic.ValidationError) as info:
        SearchSpaceConfig.model_validate({"name": "n", "dims": 1, "input_shape": [1, 8]})
    assert describe_validation_error(info.value) == [
        ("stem", "required field is missing"),
        ("stages", "required field is missing"),
        ("head", "required field is missing"),
    ]


class _A(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    kind: Literal["a"]
    v: int


class _B(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    kind: Literal["b"]
    w: int


class _Top(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    items: list[_A | _B]
    named: dict[str, _A] = {}


def test_describe_drops_union_tags_and_lists_valid_keys() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        _Top.model_validate({"items": [{"kind": "a", "v": 1, "zz": 2}], "named": {"k": {"kind": "a", "v": "x"}}})
    problems = describe_validation_error(info.value, _Top)
    assert ("items[0].zz", "unknown key; valid keys: kind, v") in problems
    assert ("named.k.v", "Input should be a valid integer, unable to parse string as an integer (got 'x')") in problems
