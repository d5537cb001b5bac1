"""The built wheel works outside the checkout: its data ships inside the package (``jmsnas/_data/``).

Marked ``packaging``: it builds the wheel with this venv's setuptools (no build isolation, no index),
installs it with ``--no-deps`` into a fresh venv that reuses this venv's packages through a ``.pth``
line (no network), and runs the installed commands from a directory outside the checkout. Skipped
when the wheel cannot be built here (no setuptools / no pip in this venv), except under ``.ci/run``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import jmsnas
from jmsnas.resources import SHIPPED

REPO = Path(__file__).resolve().parent.parent


def _skip(why: str) -> None:
    """Skip, unless CI asks for the packaging test to run (``.ci/run`` sets JMSNAS_REQUIRE_PACKAGING=1)."""
    if os.environ.get("JMSNAS_REQUIRE_PACKAGING") == "1":
        pytest.fail(f"JMSNAS_REQUIRE_PACKAGING=1 but {why}")
    pytest.skip(why)


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _source_copy(dst: Path) -> Path:
    """What the sdist would hold (MANIFEST.in): the package, the data directories, the build files."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("jmsnas", *SHIPPED):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(REPO / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ of a fresh venv holding only the built wheel (its dependencies come from this venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    try:
        import setuptools  # noqa: F401
    except ImportError:
        _skip("setuptools is not installed in this venv: the wheel cannot be built offline")
    src = _source_copy(tmp / "src")  # setuptools builds in the source tree (build/, *.egg-info): not in the checkout
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                  "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    if build.returncode != 0:
        _skip(f"the wheel cannot be built here: {build.stderr.strip()[-400:]}")
    wheels = list((tmp / "dist").glob("jmsnas-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
                .stdout.strip())
    # A plain path line: this venv's packages become importable, but its .pth files (the editable
    # install of the checkout) are not run, so `import jmsnas` finds the wheel's copy.
    (site / "zz_reuse_parent_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                    str(wheels[0])], cwd=tmp)
    assert install.returncode == 0, install.stderr
    return env_dir / "bin"


@pytest.mark.packaging
def test_wheel_ships_the_data_and_runs_a_packaged_experiment(installed: Path, tmp_path: Path) -> None:
    py = str(installed / "python")
    where = _run([py, "-c", "import jmsnas, jmsnas.config as c; print(jmsnas.__file__); print(c.DEFAULT_PROFILES_DIR)"],
                 cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    module, profiles = where.stdout.split()
    assert Path(module).is_relative_to(installed.parent), module  # the wheel's copy, not the checkout
    assert Path(profiles) == Path(module).parent / "_data" / "latency_profiles"
    for name in SHIPPED:  # every file of the checkout's data directories is in the wheel
        ours = sorted(p.relative_to(REPO / name) for p in (REPO / name).rglob("*") if p.is_file()
                      and p.suffix in (".yaml", ".csv", ".json"))
        theirs = sorted(p.relative_to(Path(module).parent / "_data" / name)
                        for p in (Path(module).parent / "_data" / name).rglob("*") if p.is_file())
        assert ours == theirs, name

    version = _run([str(installed / "jmsnas"), "--version"], cwd=tmp_path)  # the console script
    assert (version.returncode, version.stdout.strip()) == (0, f"jmsnas {jmsnas.__version__}"), version.stderr
    for cmd in ([str(installed / "jmsnas"), "search", "experiments/quickstart.yaml", "--check"],
                [py, "-m", "jmsnas.search", "quickstart", "--check"]):
        check = _run(cmd, cwd=tmp_path)
        assert check.returncode == 0, check.stderr
        assert "check       OK" in check.stdout
        assert f"output      {tmp_path.resolve() / 'runs' / 'quickstart'}" in check.stdout
    assert not (Path(module).parent.parent / "latency_profiles").exists()  # nothing written beside the package
    meta = _run([py, "-c", "import importlib.metadata as m; print(m.version('jmsnas'))"], cwd=tmp_path)
    assert meta.stdout.strip() == jmsnas.__version__


# --- the resolver, in the checkout (no wheel) ---------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_checkout_resolves_to_the_top_level_directories(name: str) -> None:
    from jmsnas.resources import shipped

    assert shipped(name) == REPO / name


def test_experiment_file_finds_a_shipped_experiment_by_name(tmp_path: Path, monkeypatch) -> None:
    from jmsnas.resources import experiment_file

    monkeypatch.chdir(tmp_path)
    quick = REPO / "experiments" / "quickstart.yaml"
    assert experiment_file("quickstart") == quick
    assert experiment_file("experiments/quickstart.yaml") == quick  # no such file here
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")
    assert experiment_file("quickstart.yaml") == Path("quickstart.yaml")  # a file here wins
    assert experiment_file("nothing.yaml") == Path("nothing.yaml")  # left for the loader to report


def test_profiles_default_to_the_working_directory_when_it_holds_them(tmp_path: Path, monkeypatch) -> None:
    from jmsnas.config import DEFAULT_PROFILES_DIR, default_profiles_dir

    monkeypatch.chdir(tmp_path)
    assert default_profiles_dir(["cpu-1t"]) == DEFAULT_PROFILES_DIR == REPO / "latency_profiles"
    (tmp_path / "latency_profiles").mkdir()
    (tmp_path / "latency_profiles" / "mine.csv").write_text("")
    assert default_profiles_dir(["mine"]) == tmp_path.resolve() / "latency_profiles"
    assert default_profiles_dir(["mine", "cpu-1t"]) == DEFAULT_PROFILES_DIR  # not all there: the shipped ones
