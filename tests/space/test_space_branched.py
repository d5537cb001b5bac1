"""Branched search spaces (a mesh's, eq. (2)): the file, the supernet over it, the discrete network and its bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jmsnas.errors import ConfigError
from jmsnas.export.branched import branched_sizes, export_branched_bundle
from jmsnas.plan.planners import plan_branched
from jmsnas.runtime.bundle import run_bundle
from jmsnas.space.branched import BranchedArchSpec, build_branched
from jmsnas.space.spec import load_search_space
from jmsnas.space.supernet import Supernet
from jmsnas.topology import Device, Link, build_topology

REPO = Path(__file__).resolve().parents[2]
MESH_SPACE = REPO / "search_spaces" / "mbconv13_1d_mesh.yaml"


def _space_file(tmp_path: Path, drop: tuple[str, ...] = (), **changes) -> Path:
    data = yaml.safe_load(MESH_SPACE.read_text())
    data.update(changes)
    for key in drop:
        del data[key]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_mesh_space_numbers_its_layers_pre_branches_post(tmp_path: Path) -> None:
    space = load_search_space(MESH_SPACE)
    slots = space.layers()
    assert [s.part for s in slots] == ["pre"] * 2 + ["branch0"] * 2 + ["branch1"] * 2 + ["branch2"] * 2 + ["post"]
    assert space.num_layers == len(slots) == 9 and space.num_branches == 3
    assert [s.index for s in slots] == list(range(9))
    for b in range(3):  # every branch is fed the root's output (24 channels at length 20)
        first = next(s for s in slots if s.part == f"branch{b}")
        assert (first.in_channels, first.in_size, first.stride) == (24, (20,), 2)
    assert space.join_shape() == (48, 10)  # three 16-channel branches concatenated
    post = slots[-1]
    assert (post.in_channels, post.in_size, post.out_channels) == (48, (10,), 48)
    assert space.head_input_shape() == (48, 10)
    # without post layers the head takes the merged outputs
    no_post = load_search_space(_space_file(tmp_path, post=[]))
    assert no_post.head_input_shape() == (48, 10) and no_post.layers()[-1].part == "branch2"


@pytest.mark.parametrize(("changes", "drop", "field", "words"), [
    ({"branches": [{"stages": [{"channels": 16, "stride": 2}]}, {"stages": [{"channels": 16, "stride": 1}]}]}, (),
     "branches[1].stages", "resolution"),
    ({"merge": "add", "branches": [{"stages": [{"channels": 16}]}, {"stages": [{"channels": 8}]}]}, (),
     "branches[1].stages", "equal widths"),
    ({"merge": "add"}, ("branches", "post"), "merge", "branched space"),
    ({}, ("branches",), "post", "branched space"),
    ({"branches": [{"stages": [{"channels": 16}], "candidates": ["mb_k3_e9"]}]}, (), "branches[0].candidates[0]",
     "unknown candidate"),
])
def test_a_bad_branched_space_names_the_field(changes: dict, drop: tuple, field: str, words: str,
                                              tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_search_space(_space_file(tmp_path, drop, **changes))
    message = str(err.value)
    assert "space.yaml" in message and field in message and words in message, message


def _paths(net: Supernet, seed: int) -> list[int]:
    return net.sample_paths(torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("merge", ["concat", "add"])
def test_supernet_subnet_and_arch_json_compute_the_same(merge: str, tmp_path: Path) -> None:
    space = load_search_space(_space_file(tmp_path, merge=merge))
    torch.manual_seed(0)
    supernet = Supernet(space, num_classes=10).eval()
    x = torch.randn(5, 1, 40)
    for seed in range(4):
        paths = _paths(supernet, seed)
        net = supernet.export_subnet(paths).eval()
        with torch.no_grad():
            want = supernet(x, paths)
            torch.testing.assert_close(net(x), want, rtol=0, atol=1e-6)
        spec = supernet.to_arch_spec(paths=paths)
        assert isinstance(spec, BranchedArchSpec) and spec.choices == supernet.choices(paths)
        spec.save_json(tmp_path / "arch.json")
        again = BranchedArchSpec.load_json(tmp_path / "arch.json")
        assert again == spec and json.loads((tmp_path / "arch.json").read_text())["kind"] == "branched"
        rebuilt = build_branched(again).eval()
        rebuilt.load_state_dict(net.state_dict())  # the same module structure, parameter for parameter
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), want, rtol=0, atol=1e-6)


def test_a_bad_branched_arch_json_names_the_field(tmp_path: Path) -> None:
    supernet = Supernet(load_search_space(MESH_SPACE), num_classes=10)
    data = supernet.to_arch_spec(paths=_paths(supernet, 0)).to_dict()
    data["branches"][1][0]["in_channels"] = 7
    (tmp_path / "arch.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"arch\.json.*branches\.1\.0\.in_channels|branches\[1\]\[0\]\.in_channels"):
        BranchedArchSpec.load_json(tmp_path / "arch.json")


def test_the_bundle_of_a_searched_branched_net_reproduces_it(tmp_path: Path) -> None:
    torch.manual_seed(1)
    supernet = Supernet(load_search_space(MESH_SPACE), num_classes=10).eval()
    net = supernet.export_subnet(_paths(supernet, 3)).eval()
    x = torch.randn(4, 1, 40)
    names = ["ue", "sbs", "m1", "m2", "m3", "cloud"]
    pairs = [("ue", "sbs"), *(("sbs", m) for m in names[2:5]), *((m, "cloud") for m in names[2:5])]
    mesh = build_topology("mesh", [Device(n) for n in names], [Link(a, b, 10.0, 1.0) for a, b in pairs])
    sizes = branched_sizes(net, x)
    pre = {n: [0.1 if n == "ue" else 9.0] * 2 + [0.1 if n == "sbs" else 9.0] for n in names}  # ue: stem + 1
    post = {n: [0.1] * len(sizes.post) for n in names}
    branches = [([0.5] * len(s), s) for s in sizes.branches]
    plan = plan_branched((pre, sizes.pre), branches, (post, sizes.post), sizes.input_bytes, sizes.join_input_bytes,
                         mesh)
    assert [s.device for s in plan.segments] == names
    export_branched_bundle(net, plan, x, tmp_path / "bundle")
    with torch.no_grad():
        want = net(x)
        for backend, tol in (("torchscript", 1e-5), ("onnx", 1e-4)):
            torch.testing.assert_close(run_bundle(tmp_path / "bundle", x, backend)[0], want, rtol=0, atol=tol)
