from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jmsnas.config import MorphismConfig, ProxylessConfig, load_experiment
from jmsnas.errors import ConfigError, DatasetError, JmsnasError, TopologyError
from jmsnas.search import main

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_load(path: Path) -> None:
    exp = load_experiment(path, check_data=False)
    assert exp.config.name == path.stem
    assert exp.search_space.num_layers > 0
    assert len(exp.topology.devices) >= 2


def test_shipped_experiments_cover_both_topologies() -> None:
    kinds = {load_experiment(p, check_data=False).topology.kind for p in EXPERIMENTS}
    assert kinds == {"chain", "mesh"}


def test_defaults_filled_and_paths_resolved(tiny_experiment, write_experiment, tmp_path) -> None:
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "t.yaml").write_text(Path(tiny_experiment["search_space"]).read_text())
    tiny_experiment["search_space"] = "../spaces/t.yaml"  # relative to the experiment file, not the cwd
    exp = load_experiment(write_experiment(tiny_experiment, "exps/exp.yaml"))
    assert exp.config.search_space == tmp_path / "spaces" / "t.yaml"
    assert isinstance(exp.config.strategy, ProxylessConfig)
    assert exp.config.strategy.penalty == "two_sided" and exp.config.strategy.retrain.init == "inherit"
    assert exp.config.dataset.val_fraction == 0.1
    assert exp.run_dir == Path.cwd() / "runs" / "tiny"


def _set(data: dict, dotted: str, value) -> dict:
    keys = dotted.replace("]", "").replace("[", ".").split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


_DELETE = object()
_MESH_NO_JOIN = {
    "kind": "mesh",
    "devices": [{"name": n, "analytic": {"macs_per_s": 1e9, "memory_bytes": 1000}} for n in "rxyz"],
    "links": [{"src": "r", "dst": d, "bandwidth_mbps": 10.0} for d in "xyz"],
}
_CYCLE_LINKS = [
    {"src": "a", "dst": "b", "bandwidth_mbps": 1.0},
    {"src": "b", "dst": "c", "bandwidth_mbps": 1.0},
    {"src": "c", "dst": "b", "bandwidth_mbps": 1.0},
]

# (case id, field to change, new value, error class, text that must appear in the message)
BAD_CASES = [
    ("unknown-top-key", "colour", "blue", ConfigError, "colour: unknown key; valid keys: name, seed, dataset"),
    ("unknown-nested-key", "dataset.batchsize", 3, ConfigError, "dataset.batchsize: unknown key"),
    ("unknown-key-in-list", "topology.links[0].speed", 3, ConfigError, "topology.links[0].speed: unknown key"),
    ("wrong-type", "dataset.batch_size", "many", ConfigError, "dataset.batch_size:"),
    ("fraction-out-of-range", "dataset.val_fraction", 1.5, ConfigError, "dataset.val_fraction:"),
    ("negative-bandwidth", "topology.links[1].bandwidth_mbps", -5.0, TopologyError,
     "topology.links[1].bandwidth_mbps: bandwidth must be > 0"),
    ("negative-rtt", "topology.links[0].rtt_ms", -1.0, TopologyError, "topology.links[0].rtt_ms"),
    ("unknown-device", "topology.links[0].dst", "nowhere", TopologyError,
     "topology.links[0].dst: unknown device 'nowhere'; known devices: a, b, c"),
    ("cycle", "topology.links", _CYCLE_LINKS, TopologyError, "topology.links: links form a cycle"),
    ("two-sources", "topology.links", [{"src": "a", "dst": "c", "bandwidth_mbps": 1.0},
                                       {"src": "b", "dst": "c", "bandwidth_mbps": 1.0}],
     TopologyError, "exactly one source device"),
    ("disconnected", "topology.links", [{"src": "a", "dst": "b", "bandwidth_mbps": 1.0}], TopologyError,
     "exactly one source"),
    ("mesh-without-join", "topology", _MESH_NO_JOIN, TopologyError, "branches must join again"),
    ("chain-that-branches", "topology", {**_MESH_NO_JOIN, "kind": "chain", "links": _MESH_NO_JOIN["links"][:2] + [
        {"src": "x", "dst": "z", "bandwidth_mbps": 1.0}, {"src": "y", "dst": "z", "bandwidth_mbps": 1.0}]},
     TopologyError, "topology.kind: kind is 'chain'"),
    ("duplicate-device", "topology.devices[1].name", "a", TopologyError, "topology.devices[1].name"),
    ("device-two-descriptions", "topology.devices[0].profile", "cpu-1t", ConfigError,
     "topology.devices[0]: give exactly one of 'profile'"),
    ("missing-profile", "topology.devices[0]", {"name": "a", "profile": "no-such-device"}, ConfigError,
     "topology.devices[0].profile: no latency profile 'no-such-device'"),
    ("missing-dataset-root", "dataset", {"name": "cifar10", "root": "nowhere"}, DatasetError,
     "dataset.root: expected the python version of cifar10"),
    ("unknown-dataset", "dataset.name", "imagenet", ConfigError, "dataset:"),
    ("unknown-search-space", "search_space", "no_such_space.yaml", ConfigError, "search_space: search space file"),
    ("unknown-strategy", "strategy.name", "darts", ConfigError, "strategy:"),
    ("missing-t-const", "strategy.t_const_ms", _DELETE, ConfigError, "strategy.t_const_ms: required field"),
    ("pinned-without-counts", "strategy.split", "pinned", ConfigError, "max_layers_per_device"),
    ("grid-unknown-key", "tune", {"grid": {"learning_rate": [1, 2]}}, ConfigError,
     "tune.grid.learning_rate: cannot grid over"),
    ("bad-scheduler", "tune", {"scheduler": "pbt"}, ConfigError, "tune.scheduler:"),
    ("bad-compressor", "partition", {"compressors": [{"kind": "zip"}]}, ConfigError,
     "partition.compressors[0].kind:"),
    ("bad-name", "name", "has spaces", ConfigError, "name:"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_experiment_names_field(case, tiny_experiment, write_experiment, capsys) -> None:
    _, field, value, error, text = case
    path = write_experiment(_set(tiny_experiment, field, value))
    with pytest.raises(error) as info:
        load_experiment(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert text in message, message
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and text in err


def test_yaml_syntax_error(write_experiment) -> None:
    path = write_experiment("name: x\ndataset: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3"):
        load_experiment(path)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_experiment_must_be_a_mapping(write_experiment, text) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment(write_experiment(text))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_experiment("/no/such/experiment.yaml")


def test_morphism_section_validates(tiny_experiment, write_experiment) -> None:
    tiny_experiment["strategy"] = {"name": "morphism", "t_const_ms": 3.0, "teacher": {"checkpoint": "t.pt"}}
    exp = load_experiment(write_experiment(tiny_experiment))
    assert isinstance(exp.config.strategy, MorphismConfig)
    assert exp.config.strategy.temperature == 20.0  # paper 000's T
    assert exp.config.strategy.teacher.checkpoint == exp.path.parent / "t.pt"


def test_every_stage_is_summarised_at_check(tiny_experiment, write_experiment, capsys) -> None:
    tiny_experiment["exits"] = {"thresholds_per_exit": 13}
    path = write_experiment(tiny_experiment)
    assert main([str(path), "--check"]) == 0
    assert "stages      search (proxyless, 1 trial(s), scheduler fifo), exits (weighted" in capsys.readouterr().out


def test_check_prints_summary(tiny_experiment, write_experiment, capsys) -> None:
    assert main([str(write_experiment(tiny_experiment)), "--check"]) == 0
    out = capsys.readouterr().out
    assert "train 360 / val 40 / test 100" in out
    assert "chain, 3 devices, 2 links; source a, sink c" in out
    assert "b -> c: 1 Mbit/s, rtt 30 ms" in out


def test_cli_exit_status_without_traceback(tiny_experiment, write_experiment) -> None:
    """The real command line: a bad file exits 2 with one line of error and no traceback."""
    tiny_experiment["topology"]["links"][0]["bandwidth_mbps"] = 0
    path = write_experiment(tiny_experiment)
    proc = subprocess.run([sys.executable, "-m", "jmsnas.search", "--check", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "topology.links[0].bandwidth_mbps" in proc.stderr


def test_jmsnas_error_is_base() -> None:
    assert issubclass(TopologyError, JmsnasError) and issubclass(DatasetError, JmsnasError)
