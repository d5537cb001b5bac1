"""`STRATEGIES`: one entry per strategy config, no Ray on import, and what the orchestration asks of each."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from jmsnas.config import MorphismConfig, ProxylessConfig, RandomConfig, StrategyConfig
from jmsnas.strategies.registry import STRATEGIES, kind_of

PACKAGE = Path(__file__).resolve().parents[2] / "jmsnas"


def test_one_entry_per_strategy_config() -> None:
    assert tuple(STRATEGIES) == ("proxyless", "morphism", "random")
    union = typing.get_args(typing.get_args(StrategyConfig)[0])  # Annotated[A | B | C, discriminator]
    assert {kind.config for kind in STRATEGIES.values()} == set(union)
    for name, kind in STRATEGIES.items():
        strategy = kind.config(name=name, t_const_ms=5.0)
        assert kind.name == name and kind_of(strategy) is kind


def test_importing_the_registry_imports_no_ray_nor_training_code() -> None:
    code = ("import sys, jmsnas.strategies.registry; "
            "print(sorted(m for m in ('ray', 'pytorch_lightning', 'jmsnas.strategies.run', 'jmsnas.tune') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("strategy", "grid", "reports"), [
    (ProxylessConfig(name="proxyless", t_const_ms=5.0, epochs=3), {}, 4),  # one per epoch, and the last
    (ProxylessConfig(name="proxyless", t_const_ms=5.0, epochs=3), {"epochs": [2, 7]}, 8),
    (MorphismConfig(name="morphism", t_const_ms=5.0, iterations=2), {"iterations": [1]}, 4),  # and the start
    (RandomConfig(name="random", t_const_ms=5.0, num_candidates=4), {"num_candidates": [6]}, 7),
])
def test_max_reports_of_the_longest_trial(strategy, grid: dict, reports: int) -> None:
    assert kind_of(strategy).max_reports(strategy, grid) == reports


def test_only_the_morphism_trial_runs_tasks() -> None:
    morphism = MorphismConfig(name="morphism", t_const_ms=5.0, parallel_children=2)
    assert kind_of(morphism).workers(morphism, {"parallel_children": [1, 3]}) == 3
    assert kind_of(morphism).parallel_field == "parallel_children"
    for strategy in (ProxylessConfig(name="proxyless", t_const_ms=5.0), RandomConfig(name="random", t_const_ms=5.0)):
        assert kind_of(strategy).workers(strategy, {}) is None and kind_of(strategy).parallel_field is None


def test_no_isinstance_on_a_strategy_config_outside_the_registry() -> None:
    names = {"ProxylessConfig", "MorphismConfig", "RandomConfig", "StrategyConfig"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                if names & {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []
