"""A tiny profile run writes the expected rows, resumes without re-measuring, and refuses mixed conditions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import jmsnas.latency.profiler as profiler
from jmsnas.errors import JmsnasError
from jmsnas.latency.model import ProfiledLatencyModel
from jmsnas.latency.ops import build_module, descriptor_key, example_input, grid_descriptors, space_descriptors
from jmsnas.profile import main
from jmsnas.space.macs import arch_descriptors
from jmsnas.space.spec import load_search_space

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "search_spaces" / "tiny_1d.yaml"


def test_space_descriptors_cover_every_allowed_candidate() -> None:
    space = load_search_space(TINY)
    descs = space_descriptors(space)
    # stem + (13 + 6 + 13 candidates on tiny_1d's three layers) + head
    assert len(descs) == 1 + sum(len(s.candidates) for s in space.layers()) + 1 == 34
    assert [d.kind for d in (descs[0], descs[-1])] == ["stem", "head"]
    for d in descs:  # every descriptor builds a module whose output has the described shape
        out = build_module(d)(example_input(d))
        assert tuple(out.shape[1:]) == ((d.out_channels, *d.out_size) if d.kind != "head" else (d.out_channels,))
    grid = grid_descriptors(descs)
    assert grid[: len(descs)] == descs and len({descriptor_key(d) for d in grid}) == len(grid) > 5 * len(descs)


def test_tiny_profile_writes_rows_and_resumes(tmp_path: Path, monkeypatch) -> None:
    space = load_search_space(TINY)
    expected = {descriptor_key(d) for d in space_descriptors(space)}
    assert main(["--search-space", str(TINY), "--device-name", "tiny", "--no-grid", "--no-guard", "--blocks", "3",
                 "--block-size", "1", "--warmup", "0", "--calibration-nets", "3", "--out-dir", str(tmp_path)]) == 0
    csv_path = tmp_path / "tiny.csv"
    rows = profiler.read_rows(csv_path)
    assert {r["key"] for r in rows} == expected and all(float(r["latency_ms"]) > 0 for r in rows)
    assert all(r["exact"] == "1" and r["repeats"] == "9" for r in rows)  # 3 blocks of 1 run, in 3 rounds
    nets = profiler.read_rows(profiler.networks_path(csv_path), profiler.NETWORK_COLUMNS)
    assert len(nets) == 3 and all(float(r["latency_ms"]) > 0 and float(r["ops_ms"]) > 0 for r in nets)
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["complete"] and meta["threads"] == 1 and meta["rows"] == len(expected) and meta["rounds"] == 3
    assert meta["search_spaces"] == ["tiny_1d"] and meta["torch"]

    # interrupt: drop the last two rows and leave a torn line, as a killed run would
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    timed: list[str] = []
    real = profiler.time_interleaved

    def counting(modules, inputs, **kw):
        timed.extend(type(m).__name__ for m in modules)
        return real(modules, inputs, **kw)

    monkeypatch.setattr(profiler, "time_interleaved", counting)
    assert main(["--search-space", str(TINY), "--device-name", "tiny", "--no-grid", "--no-guard", "--blocks", "3",
                 "--block-size", "1", "--warmup", "0", "--calibration-nets", "3", "--out-dir", str(tmp_path)]) == 0
    assert len(timed) == 2 * 3  # only the two missing rows were measured again, in 3 rounds (the networks were there)
    assert {r["key"] for r in profiler.read_rows(csv_path)} == expected
    assert ProfiledLatencyModel.from_csv(csv_path).predict(space_descriptors(space)).min() > 0


def test_resume_refuses_other_conditions(tmp_path: Path) -> None:
    space = load_search_space(TINY)
    kw = {"grid": False, "blocks": 2, "block_size": 1, "warmup": 0, "calibration_nets": 0, "progress": False}
    profiler.profile_search_spaces([space], "p", tmp_path, threads=1, **kw)
    with pytest.raises(JmsnasError, match="threads: profile has 1, this run 2"):
        profiler.profile_search_spaces([space], "p", tmp_path, threads=2, **kw)


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["--search-space", str(tmp_path / "none.yaml"), "--device-name", "x", "--out-dir",
                 str(tmp_path)]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert main(["--search-space", str(TINY), "--device-name", "a/b", "--out-dir", str(tmp_path)]) == 2
    assert main(["--search-space", str(TINY), "--device-name", "x", "--threads", "0"]) == 2


def test_calibration_networks_of_an_older_layout_are_measured_again(tmp_path: Path) -> None:
    """A networks file without ``ops_ms`` (the layout before the drift-free calibration) is re-measured, not mixed."""
    args = ["--search-space", str(TINY), "--device-name", "tiny", "--no-grid", "--no-guard", "--blocks", "2",
            "--block-size", "1", "--warmup", "0", "--calibration-nets", "2", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    path = profiler.networks_path(tmp_path / "tiny.csv")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace("ops_ms", "layers_ms"), *lines[1:]]) + "\n")
    assert main(args) == 0
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == profiler.NETWORK_COLUMNS and len(rows) == 2 and all(float(r["ops_ms"]) > 0 for r in rows)


def test_every_row_and_network_keeps_its_fastest_round(tmp_path: Path, monkeypatch) -> None:
    """The machine runs the second of three rounds quiet (1 ms a module) and the others 1.5x and 2x slower."""
    calls: list[int] = []
    rounds_seen: dict[int, int] = {}

    def fake(modules, inputs, extra=(), **kw):
        calls.append(len(modules))
        rounds_seen[id(modules)] = rounds_seen.get(id(modules), 0) + 1  # a chunk passes the same list every round
        slow = (1.5, 1.0, 2.0)[rounds_seen[id(modules)] - 1]
        return [(slow, 0.1 * slow)] * len(modules) + [(1.0, 0.0)] * len(extra)

    monkeypatch.setattr(profiler, "time_interleaved", fake)
    space = load_search_space(TINY)
    csv_path = profiler.profile_search_spaces([space], "r", tmp_path, grid=False, blocks=2, block_size=5, warmup=0,
                                              rounds=3, calibration_nets=2, progress=False)
    rows = profiler.read_rows(csv_path)
    assert rows and all(float(r["latency_ms"]) == 1.0 and float(r["spread_ms"]) == 0.1 for r in rows)
    assert all(r["repeats"] == "30" for r in rows)
    nets = profiler.read_rows(profiler.networks_path(csv_path), profiler.NETWORK_COLUMNS)
    n_ops = [len(arch_descriptors(s)) for s in profiler.calibration_specs(space, 2)]
    assert [float(r["latency_ms"]) for r in nets] == [1.0, 1.0]
    assert [float(r["ops_ms"]) for r in nets] == [float(n) for n in n_ops]  # each op's fastest round, summed
    chunks_of_ops = -(-len(rows) // profiler.CHUNK)
    assert len(calls) == 3 * chunks_of_ops + 3  # three rounds of every chunk of ops, then of the one network chunk
