"""The layout the restructuring promised, checked on the source (a regression here is a design change).

- Library packages below the stages never import the experiment (``jmsnas.config``): they take typed
  objects and their own config section; ``jmsnas.builders`` is the one place that builds them.
- No module over 400 lines, no function over 60 (``def`` to its last line, docstring included).
- Imports run one way: nothing in a library package imports a stage (``stages``, ``tune``, ``search``,
  ``deploy``, ``builders``, ``rundir``, ``strategies``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jmsnas"
LIBRARY = ("plan", "compress", "export", "runtime", "exits", "space", "latency")
STAGES = ("jmsnas.stages", "jmsnas.tune", "jmsnas.search", "jmsnas.deploy", "jmsnas.builders", "jmsnas.rundir",
          "jmsnas.strategies", "jmsnas.config")
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


@pytest.mark.parametrize("package", LIBRARY)
def test_library_packages_import_no_stage_and_no_experiment(package: str) -> None:
    found = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for line, name in _imports(ast.parse(path.read_text())):
            if any(name == s or name.startswith(s + ".") for s in STAGES):
                found.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert found == []


def test_no_module_over_400_lines_and_no_function_over_60() -> None:
    long_modules = [f"{p.relative_to(PACKAGE)}: {n}" for p in SOURCES if (n := p.read_text().count("\n")) > 400]
    long_functions = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length}")
    assert long_modules == [] and long_functions == []


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """The walkers above find an import of the experiment and a long function when there is one."""
    src = "from jmsnas.config import Experiment\n\ndef f():\n" + "    x = 1\n" * 70
    tree = ast.parse(src)
    assert (1, "jmsnas.config.Experiment") in _imports(tree)
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert fn.end_lineno - fn.lineno + 1 == 71
