"""Network morphisms keep the function: each one and random chains, eval and train mode, BatchNorm statistics moved.

Also the ArchSpec fields they add: validation, JSON round trip, MAC/parameter counts, fx splitting.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from jmsnas.errors import ConfigError
from jmsnas.export.split import run_segments, split_graph, trace_units, units
from jmsnas.space import morph
from jmsnas.space.arch import ArchNet, ArchSpec, build_model
from jmsnas.space.macs import arch_descriptors, count_macs
from jmsnas.space.spec import load_search_space

ROOT = Path(__file__).resolve().parents[2]
SPACE_1D = load_search_space(ROOT / "search_spaces" / "tiny_1d.yaml")
SPACE_2D = load_search_space(ROOT / "search_spaces" / "tiny_2d.yaml")
OPS = ["mb_k3_e3_sc", "mb_k5_e6_sc"]
TOL = 1e-5


def _stir_batchnorm(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Move BatchNorm affine parameters and running statistics well away from their defaults."""
    for m in net.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.weight.data = 1 + 0.3 * torch.randn(n, generator=gen)
            m.bias.data = 0.3 * torch.randn(n, generator=gen)
            m.running_mean = 0.5 * torch.randn(n, generator=gen)
            m.running_var = 0.5 + torch.rand(n, generator=gen) * 1.5


def _parent(space=SPACE_1D, choices=("mb_k3_e3", "mb_k5_e3", "mb_k3_e3_sc"), seed: int = 0) -> tuple[ArchSpec, ArchNet]:
    torch.manual_seed(seed)
    spec = ArchSpec.from_choices(space, list(choices), num_classes=5)
    net = build_model(spec)
    net.train()
    for _ in range(3):  # a few training-mode passes, then stir: statistics far from (0, 1)
        net(torch.randn(8, *spec.input_shape))
    _stir_batchnorm(net, torch.Generator().manual_seed(seed))
    return spec, net


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Largest output difference on random inputs, in eval mode and in train mode (batch statistics)."""
    x = torch.randn(16, *shape)
    worst = 0.0
    with torch.no_grad():
        for train in (False, True):
            a.train(train)
            b.train(train)
            worst = max(worst, float((a(x) - b(x)).abs().max()))
    return worst


CASES = {
    "deepen_after_stem": lambda s, n, r: morph.deepen(s, n, 0, "mb_k3_e3_sc"),
    "deepen_in_run": lambda s, n, r: morph.deepen(s, n, 3, "mb_k5_e6_sc"),
    "widen_stem": lambda s, n, r: morph.widen(s, n, 0, 3, r),
    "widen_residual_run": lambda s, n, r: morph.widen(s, n, 3, 5, r),
    "widen_hidden": lambda s, n, r: morph.widen_hidden(s, n, 1, 7, r),
    "add_skip_across_stride": lambda s, n, r: morph.add_skip(s, n, 2, 0),
    "add_skip_projection": lambda s, n, r: morph.add_skip(s, n, 1, 1),
    "concat": lambda s, n, r: morph.concat(s, n, 1, 0, 4, r),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_morphism_keeps_outputs(name: str) -> None:
    spec, net = _parent()
    child_spec, child = CASES[name](spec, net, random.Random(0))
    assert child_spec != spec
    assert _max_diff(net, child, spec.input_shape) <= TOL
    assert child.state_dict().keys() == build_model(child_spec).state_dict().keys()


def test_morphisms_grow_what_they_say() -> None:
    spec, net = _parent()
    rng = random.Random(0)
    assert len(morph.deepen(spec, net, 1, "mb_k3_e3_sc")[0].blocks) == 4
    wide, _ = morph.widen(spec, net, 3, 5, rng)  # block 2 is a shortcut: positions 2 and 3 widen together
    assert (wide.blocks[1].out_channels, wide.blocks[2].in_channels, wide.blocks[2].out_channels) == (13, 13, 13)
    assert wide.blocks[2].hidden == spec.blocks[2].hidden == 24  # the hidden width stays, now stored
    assert morph.widen_hidden(spec, net, 1, 7, rng)[0].blocks[1].hidden == spec.blocks[1].hidden + 7
    cat, _ = morph.concat(spec, net, 1, 0, 4, rng)
    assert (cat.blocks[1].out_channels, cat.blocks[1].body_out_channels, cat.blocks[2].out_channels) == (12, 8, 12)
    assert cat.compact().split()[1] == "ir_k5_e3_s2_c12_cat0c4"


@pytest.mark.parametrize(("space", "choices"), [
    (SPACE_1D, ("mb_k3_e3", "mb_k5_e3", "mb_k3_e3_sc")),
    (SPACE_1D, ("identity", "mb_k7_e6", "identity")),
    (SPACE_2D, None),
])
def test_random_chains_keep_outputs(space, choices) -> None:
    rng = random.Random(1)
    choices = choices or [slot.candidates[0] for slot in space.layers()]
    kinds = set()
    for chain in range(6):
        spec, net = _parent(space, choices, seed=chain)
        for _ in range(5):
            child_spec, child, what = morph.random_morphism(spec, net, rng, OPS)
            assert _max_diff(net, child, spec.input_shape) <= TOL, f"{what} on {spec.compact()}"
            _stir_batchnorm(child, torch.Generator().manual_seed(chain))  # the next morphism sees moved statistics
            spec, net = child_spec, child
            kinds.add(what.split("@")[0])
    assert kinds == {"deepen", "widen", "widen_hidden", "add_skip", "concat"}


def _grown(seed: int = 3, steps: int = 8) -> tuple[ArchSpec, ArchNet]:
    spec, net = _parent(seed=seed)
    rng = random.Random(seed)
    spec, net = morph.add_skip(spec, net, 2, 0)
    spec, net = morph.concat(spec, net, 1, 0, 2, rng)
    for _ in range(steps):
        spec, net, _ = morph.random_morphism(spec, net, rng, OPS)
    return spec, net


def test_grown_network_round_trips_through_json(tmp_path: Path) -> None:
    spec, net = _grown()
    spec.save_json(tmp_path / "arch.json")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    loaded = ArchSpec.load_json(tmp_path / "arch.json")
    assert loaded == spec and json.loads((tmp_path / "arch.json").read_text())["compact"] == spec.compact()
    rebuilt = build_model(loaded)
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert _max_diff(net, rebuilt, spec.input_shape) == 0.0


def test_grown_network_counts_match_modules() -> None:
    spec, net = _grown()
    descs = arch_descriptors(spec)
    assert sum(d.macs for d in descs) == count_macs(net, spec.input_shape)
    assert sum(d.params for d in descs) == sum(p.numel() for p in net.parameters())
    skip_blocks = [i for i, b in enumerate(spec.blocks) if b.skip_from is not None]
    assert {descs[i + 1].op.split("+")[1] for i in skip_blocks} <= {"add", "concat"}


def test_grown_network_splits_with_fx_across_skips() -> None:
    spec, net = _grown()
    net.eval()
    gm = trace_units(net)
    n = len(units(gm))
    x = torch.randn(3, *spec.input_shape)
    for bounds in ([0, n // 4, n // 2, n], [0, 1, n - 1, n]):
        torch.testing.assert_close(run_segments(split_graph(gm, bounds), x)[0], net(x), rtol=0, atol=0)


def test_plain_spec_json_is_unchanged() -> None:
    spec = ArchSpec.from_choices(SPACE_1D, ["mb_k3_e3", "mb_k5_e3", "mb_k3_e3_sc"], 5)
    for block in spec.to_dict()["blocks"]:
        assert set(block) == {"op", "in_channels", "out_channels", "stride", "kernel_size", "expansion", "shortcut"}
    assert spec.is_sequential and build_model(spec).sources == (None, None, None)


@pytest.mark.parametrize(("index", "fields", "where"), [
    (0, {"skip_from": 2}, "blocks[0].skip_from"),
    (0, {"skip_from": 0, "merge": "concat"}, "blocks[0].skip_channels"),
    (0, {"skip_from": 0, "merge": "concat", "skip_channels": 4}, "blocks[0].skip_channels"),
    (0, {"merge": "concat"}, "blocks[0].skip_from"),
    (2, {"skip_from": 1, "merge": "concat", "skip_channels": 2}, "blocks[2].merge"),
    (0, {"op": "identity", "kernel_size": None, "expansion": None, "hidden_channels": 9}, "blocks[0].hidden_channels"),
])
def test_bad_skip_fields_name_the_field(index: int, fields: dict, where: str, tmp_path: Path) -> None:
    data = ArchSpec.from_choices(SPACE_1D, ["mb_k3_e3", "mb_k5_e3", "mb_k3_e3_sc"], 5).to_dict()
    data["blocks"][index].update(fields)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=re.escape(where)):
        ArchSpec.load_json(path)
