"""Shared fixtures: a tiny valid experiment that each test can break one field of."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("KINETO_LOG_LEVEL", "6")
# One thread: the suite runs on 2 shared cores, and tiny tensors gain nothing from more.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent

TINY_EXPERIMENT = {
    "name": "tiny",
    "seed": 0,
    "dataset": {"name": "mnist1d", "num_samples": 500, "batch_size": 32},
    "search_space": str(REPO / "search_spaces" / "tiny_1d.yaml"),
    "topology": {
        "kind": "chain",
        "devices": [
            {"name": "a", "analytic": {"macs_per_s": 1.0e7, "memory_bytes": 1048576}},
            {"name": "b", "analytic": {"macs_per_s": 1.0e8, "memory_bytes": 1048576}},
            {"name": "c", "analytic": {"macs_per_s": 1.0e9, "memory_bytes": 1073741824}},
        ],
        "links": [
            {"src": "a", "dst": "b", "bandwidth_mbps": 100.0, "rtt_ms": 0.0},
            {"src": "b", "dst": "c", "bandwidth_mbps": 1.0, "rtt_ms": 30.0},
        ],
    },
    "strategy": {"name": "proxyless", "t_const_ms": 5.0},
}


@pytest.fixture
def tiny_experiment() -> dict:
    """A fresh deep copy of a small valid experiment (edit it, then `write_experiment`)."""
    return copy.deepcopy(TINY_EXPERIMENT)


@pytest.fixture
def write_experiment(tmp_path: Path):
    def write(data: dict | str, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
def make_choice(tmp_path: Path):
    """A choice folder as a search writes it for an experiment's space: arch.json + the subnet's weights."""
    def make(exp, paths: tuple[int, ...] = (1, 0, 2), name: str = "t5ms") -> Path:
        from jmsnas.space.supernet import Supernet

        torch.manual_seed(0)
        supernet = Supernet(exp.search_space, 10, (1, 40))
        choice = tmp_path / "best" / name
        choice.mkdir(parents=True)
        supernet.to_arch_spec(paths=list(paths)).save_json(choice / "arch.json")
        torch.save(supernet.export_subnet(list(paths)).state_dict(), choice / "model.pt")
        return choice

    return make
