"""Block graph (residual blocks collapsed, costs per block, classifier blueprint) and exit heads under the MAC cap."""

from __future__ import annotations

import pytest
import torch
import torchvision
from exits_specs import TinyResNet, tiny_1d_spec
from torch import nn

from jmsnas.errors import ConfigError
from jmsnas.exits.graph import block_graph
from jmsnas.exits.heads import ExitHead, HeadConfig, build_exit_head, config_macs, head_family, stages_needed
from jmsnas.space.arch import build_model
from jmsnas.space.macs import arch_macs, count_macs


def _resnet18() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # grayscale input
    return model


def test_archnet_units_are_its_layers_and_identity_fuses() -> None:
    spec = tiny_1d_spec()
    model = build_model(spec)
    g = block_graph(model, spec.input_shape)
    assert g.num_units == len(model.layers()) == 6
    assert [u.macs for u in g.units] == arch_macs(spec)
    assert g.total_macs == count_macs(model, spec.input_shape)
    assert g.classifier_start == 5 and g.blueprint.hidden_channels == 24 and g.blueprint.input_shape == (16, 10)
    assert g.locations == [1, 2, 4]  # location 3 sits before the identity layer: fused
    assert g.feature_shapes[4] == (12, 20)
    assert sum(b.macs for b in g.blocks) == g.total_macs


def test_resnet18_blocks_collapse_residuals() -> None:
    model = _resnet18()
    g = block_graph(model, (1, 32, 32))
    assert g.total_macs == count_macs(model, (1, 32, 32))
    assert g.total_params == sum(p.numel() for p in model.parameters())
    assert len(g.locations) == 8  # after the stem and after each of the 7 first of 8 basic blocks
    assert g.blueprint.num_classes == 10 and g.blueprint.pool == "avg" and g.blueprint.input_shape == (512, 1, 1)
    assert [g.feature_shapes[b] for b in g.locations[:4]] == [(64, 8, 8)] * 3 + [(128, 4, 4)]
    assert [b.output_shape for b in g.blocks][-2:] == [(512, 1, 1), (10,)]


def test_locations_never_cut_a_skip_connection() -> None:
    model = TinyResNet().eval()
    g = block_graph(model, (1, 8, 8))
    names = [u.name for u in g.units]
    assert [names[b] for b in g.locations] == ["a1", "proj"]  # the first unit of each residual block
    assert names[g.classifier_start] == "pool"
    x = torch.randn(3, 1, 8, 8)
    segs = g.segments([0, *g.locations, g.num_units])
    h = x
    for seg in segs:
        out = seg(h)
        assert len(out) == 1
        h = out[0]
    logits, *feats = g.feature_extractor(g.locations)(x)
    assert torch.allclose(h, model(x)) and torch.allclose(logits, model(x))
    assert [tuple(f.shape[1:]) for f in feats] == [g.feature_shapes[b] for b in g.locations]


def test_untraceable_model_is_a_config_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ConfigError, match="cannot trace"):
        block_graph(Branchy(), (4,))


@pytest.fixture(scope="module")
def graphs() -> list:
    return [block_graph(build_model(tiny_1d_spec()), (1, 40)), block_graph(_resnet18(), (1, 32, 32)),
            block_graph(TinyResNet(), (1, 8, 8))]


def test_analytic_head_macs_equal_hooked_count(graphs: list) -> None:
    for g in graphs:
        for loc in g.locations[:3]:
            for config in head_family(g.feature_shapes[loc], g.blueprint):
                assert config_macs(config) == count_macs(ExitHead(config), g.feature_shapes[loc])


@pytest.mark.parametrize("fraction", [0.002, 0.01, 0.05, 0.2])
def test_heads_respect_the_mac_cap(fraction: float, graphs: list) -> None:
    for g in graphs:
        cap = fraction * g.total_macs
        for loc in g.locations:
            head = build_exit_head(g.feature_shapes[loc], g.blueprint, cap)
            fits = [config_macs(c) for c in head_family(g.feature_shapes[loc], g.blueprint)
                    if config_macs(c) <= cap]
            if head is None:
                assert not fits
                continue
            assert head.macs <= cap and head.macs == count_macs(head, g.feature_shapes[loc])
            assert head.macs == max(fits)  # the richest head that fits
            out = head(torch.randn(2, *g.feature_shapes[loc]))
            assert out.shape == (2, g.blueprint.num_classes)


def test_large_feature_maps_are_downsampled_to_the_classifier_size() -> None:
    g = block_graph(_resnet18(), (1, 32, 32))
    head = build_exit_head(g.feature_shapes[4], g.blueprint, 0.05 * g.total_macs)
    assert head is not None and head.config.stages == 3 and head.config.stage_kind == "conv"
    assert stages_needed((40,), (10,)) == 2 and stages_needed((8, 8), (1, 1)) == 3 and stages_needed((4,), (4,)) == 0
    tight = build_exit_head(g.feature_shapes[4], g.blueprint, 0.0015 * g.total_macs)
    assert tight is not None and tight.config.stage_kind in ("separable", "pool")
    assert build_exit_head(g.feature_shapes[4], g.blueprint, 10) is None  # even pool + linear (640 MACs) is over


def test_head_config_round_trip() -> None:
    config = HeadConfig(2, (8, 16, 16), 2, "separable", 4, 12, "relu6", "max", 5)
    assert HeadConfig.from_dict(config.to_dict()) == config
    head = ExitHead(config)
    copy = ExitHead(HeadConfig.from_dict(config.to_dict()))
    copy.load_state_dict(head.state_dict())
    x = torch.randn(2, 8, 16, 16)
    assert torch.equal(head.eval()(x), copy.eval()(x))


def test_enumerated_splits_price_links_with_the_compressors() -> None:
    import math

    from exits_specs import chain3, tiny_1d_spec

    from jmsnas.compress.quantize import Compressor
    from jmsnas.exits.candidates import enumerate_placements
    from jmsnas.space.arch import build_model

    graph = block_graph(build_model(tiny_1d_spec()), (1, 40))
    topo = chain3()
    lat = {d.name: [1.0] * graph.num_units for d in topo.devices}
    args = (graph, topo, lat, lambda device, loc: 0.0, dict.fromkeys(graph.locations, 10), graph.locations)
    raw = enumerate_placements(*args)
    packed = enumerate_placements(*args, compressors=[Compressor("quantize", 8)])  # first cut only
    assert len(raw) == len(packed) > 10
    for r, p in zip(raw, packed, strict=True):
        assert (r.path, r.boundaries, r.exits) == (p.path, p.boundaries, p.exits)
        by_hand = topo.link("a", "b").latency_ms(math.ceil(r.payload_bytes[0] / 4))  # one byte per float32
        assert p.link_ms[0] == pytest.approx(by_hand) and p.link_ms[1] == r.link_ms[1]


def test_timm_model_gets_capped_heads_and_a_cascade_that_reproduces_it() -> None:
    """A model the user brings from timm: traced, blocks collapsed, heads under the cap, exits run for real."""
    import timm

    from jmsnas.exits.cascade import EarlyExitNet

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    g = block_graph(model, (3, 32, 32))
    assert g.total_macs == count_macs(model, (3, 32, 32))
    assert g.blueprint.num_classes == 10 and len(g.locations) >= 4
    cap = 0.05 * g.total_macs
    heads = [build_exit_head(g.feature_shapes[loc], g.blueprint, cap) for loc in g.locations[:2]]
    assert all(h is not None and h.macs <= cap for h in heads)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        never = EarlyExitNet.build(g, g.locations[:2], heads, [1.1, 1.1])  # no softmax reaches 1.1
        logits, index = never(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=1e-5)
        assert index.tolist() == [2] * 6
        always = EarlyExitNet.build(g, g.locations[:2], heads, [0.0, 0.0])
        logits, index = always(x)
        assert index.tolist() == [0] * 6 and torch.equal(logits, always.all_exits(x)[0])
