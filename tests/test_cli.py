"""The ``jmsnas`` command: subcommands, --version, --help, --set, --print-config, --output-dir, exit codes, -v/-q."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import jmsnas
from jmsnas.cli import LOGGER, main, setup_logging
from jmsnas.config import DICT_SOURCE, load_experiment
from jmsnas.errors import ConfigError
from jmsnas.overrides import apply_overrides, parse_override

REPO = Path(__file__).resolve().parent.parent


def test_version_through_python_m() -> None:
    out = subprocess.run([sys.executable, "-m", "jmsnas", "--version"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, f"jmsnas {jmsnas.__version__}")


def test_help_lists_commands_examples_and_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for text in ("search", "deploy", "profile", "examples:", "exit status:", "130", "jmsnas search"):
        assert text in out
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: jmsnas search") and "--print-config" in out and "exit status" in out


@pytest.mark.parametrize("command", ["deploy", "profile", "report", "serve"])
def test_every_command_help_names_itself_with_examples_exit_codes_and_verbosity(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith(f"usage: jmsnas {command}")
    for text in ("examples:", "exit status", "--quiet", f"jmsnas {command} "):
        assert text in out, text


def test_unknown_command_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serch"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_set_with_a_typo_names_the_field(tiny_experiment, write_experiment, capsys) -> None:
    path = write_experiment(tiny_experiment)
    assert main(["search", str(path), "--check", "--set", "tune.num_sample=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: tune.num_sample: unknown key; valid keys: grid, num_samples")
    assert "(from --set tune.num_sample=2)" in err and "Traceback" not in err
    assert main(["search", str(path), "--check", "--set", "tune.num_samples=two"]) == 2
    assert "tune.num_samples: Input should be a valid integer" in capsys.readouterr().err
    assert main(["search", str(path), "--check", "--set", "tune.num_samples"]) == 2
    assert "--set: takes KEY.PATH=VALUE" in capsys.readouterr().err


def test_print_config_shows_the_overrides_and_round_trips(tiny_experiment, write_experiment, tmp_path: Path,
                                                          capsys, monkeypatch) -> None:
    path = write_experiment(tiny_experiment)
    monkeypatch.chdir(tmp_path)
    argv = ["search", str(path), "--print-config", "--set", "tune.num_samples=2", "--set",
            "tune.grid.t_const_ms=[3, 4.5]", "--set", "topology.devices[0].name=mcu", "--set",
            "topology.links[0].src=mcu", "--output-dir", "elsewhere"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tune"]["num_samples"] == 2 and printed["tune"]["grid"] == {"t_const_ms": [3, 4.5]}
    assert printed["topology"]["devices"][0]["name"] == "mcu"
    assert printed["output_dir"] == str(tmp_path.resolve() / "elsewhere")  # relative to where the command runs
    assert printed["strategy"]["epochs"] == 20 and printed["dataset"]["val_fraction"] == 0.1  # defaults filled
    again = load_experiment(printed)  # what was printed is a valid experiment with the same content
    assert again.config.model_dump(mode="json") == printed


def test_output_dir_reaches_the_summary(tiny_experiment, write_experiment, tmp_path: Path, capsys) -> None:
    path = write_experiment(tiny_experiment)
    assert main(["search", str(path), "--check", "--output-dir", str(tmp_path / "o")]) == 0
    assert f"output      {tmp_path / 'o' / 'tiny'}" in capsys.readouterr().out


@pytest.mark.parametrize("shipped", [None, "quickstart.yaml", "quickstart_morphism.yaml", "quickstart_random.yaml",
                                     "quickstart_mesh.yaml"])
def test_check_imports_neither_ray_nor_lightning_nor_torch(shipped, tiny_experiment, write_experiment) -> None:
    path = write_experiment(tiny_experiment) if shipped is None else REPO / "experiments" / shipped
    code = ("import sys; from jmsnas.cli import main; rc = main(['search', sys.argv[1], '--check']); "
            "print(rc, *(m in sys.modules for m in ('ray', 'pytorch_lightning', 'lightning', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == "0 False False False False", out.stderr


def test_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["search", str(tmp_path / "none.yaml"), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "none.yaml" in err and "Traceback" not in err


def test_verbosity_sets_the_level(capsys) -> None:
    try:
        setup_logging(quiet=1)
        LOGGER.info("hidden")
        LOGGER.warning("shown")
        setup_logging(verbose=1)
        LOGGER.debug("debug line")
        out = capsys.readouterr().out
        assert "hidden" not in out and "shown" in out and "debug line" in out
        assert sum(type(h).__name__ == "_StdoutHandler" for h in LOGGER.handlers) == 1  # one, not one per call
    finally:
        setup_logging()


# --- overrides and experiments from a dict -------------------------------------------------------


@pytest.mark.parametrize("text, path, value", [
    ("tune.num_samples=2", ["tune", "num_samples"], 2),
    ("tune.grid.t_const_ms=[14, 18]", ["tune", "grid", "t_const_ms"], [14, 18]),
    ("topology.devices[1].analytic.macs_per_s=1.0e+8", ["topology", "devices", 1, "analytic", "macs_per_s"], 1e8),
    ("partition=null", ["partition"], None),
    ("name=a=b", ["name"], "a=b"),
])
def test_parse_override(text: str, path: list, value) -> None:
    assert parse_override(text) == (path, value)


def test_apply_overrides_copies_and_creates_sections() -> None:
    data = {"tune": {"grid": {}}, "topology": {"devices": [{"name": "a"}, {"name": "b"}]}}
    out = apply_overrides(data, ["topology.devices[1].name=c", "exits.objective=weighted"])
    assert out == {"tune": {"grid": {}}, "topology": {"devices": [{"name": "a"}, {"name": "c"}]},
                   "exits": {"objective": "weighted"}}
    assert data["topology"]["devices"][1] == {"name": "b"}  # the input is left alone
    with pytest.raises(ConfigError) as exc:
        apply_overrides(data, ["topology.devices[2].name=x"])
    assert exc.value.field == "topology.devices[2]"


def test_experiment_from_a_dict_equals_the_file(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    from_file = load_experiment(write_experiment(tiny_experiment))
    from_dict = load_experiment(tiny_experiment, base_dir=tmp_path)
    assert from_dict.config == from_file.config.model_copy(update={"output_dir": from_dict.config.output_dir})
    assert from_dict.path == tmp_path.resolve() / DICT_SOURCE
    bad = dict(tiny_experiment, seeed=1)
    with pytest.raises(ConfigError) as exc:
        load_experiment(bad, base_dir=tmp_path)
    assert exc.value.field == "seeed" and exc.value.file == str(tmp_path.resolve() / DICT_SOURCE)


def test_verbose_before_or_after_the_command_shows_debug_lines(tiny_experiment, write_experiment, capsys) -> None:
    path = write_experiment(tiny_experiment)
    try:
        for argv in (["-v", "search", str(path), "--check"], ["search", str(path), "--check", "-v"]):
            assert main(argv) == 0
            out = capsys.readouterr().out
            assert f"loaded      {path}" in out and "profiles    " in out and "check       OK" in out
        assert main(["search", str(path), "--check"]) == 0
        assert "profiles    " not in capsys.readouterr().out
    finally:
        setup_logging()
