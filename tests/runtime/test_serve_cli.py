"""``python -m jmsnas.serve``: bad options exit 2 naming the option; devices started one by one answer a feed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_serve import assert_gone, build_exit_bundle
from test_transport import _port

from jmsnas.runtime.bundle import load_bundle
from jmsnas.serve import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    return build_exit_bundle(tmp_path_factory.mktemp("cli") / "bundle")


@pytest.mark.parametrize(("args", "says"), [
    (["--device", "d0", "--listen", "127.0.0.1"], "--listen"),
    (["--device", "d9", "--listen", "127.0.0.1:5999", "--next", "127.0.0.1:6000"], "not in this bundle"),
    (["--device", "d2", "--listen", "127.0.0.1:5999", "--next", "127.0.0.1:6000"], "drop --next"),
    (["--device", "d0", "--listen", "127.0.0.1:5999", "--next", "a:1", "b:2"], "one --next per device it feeds"),
    (["--local", "--device", "d0"], "--local"),
    (["--local", "--rate", "-1"], "--rate"),
    (["--feed", "127.0.0.1:5999"], "--reply"),
    ([], "--device"),
    (["--local", "--timeout-ms", "0"], "--timeout-ms"),
    (["--device", "d0", "--listen", "127.0.0.1:5999", "--drop", "1,x"], "--drop"),
    (["--local", "--bandwidth-mbps", "0"], "--bandwidth-mbps"),
    (["--local", "--bandwidth-mbps", "5"], "no adaptive thresholds"),
    (["--device", "d0", "--listen", "127.0.0.1:5999", "--next", "127.0.0.1:6000", "--bandwidth-mbps", "5"],
     "no adaptive thresholds"),
])
def test_bad_options_exit_2_naming_the_option(bundle, args, says, capsys) -> None:
    try:
        rc = main([str(bundle[0]), *args])
    except SystemExit as e:  # argparse's own checks (option types) exit 2 too
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_missing_bundle_exits_2(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nowhere"), "--local"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_devices_started_one_by_one_answer_a_feed(bundle, tmp_path: Path) -> None:
    """One process per device, as on three machines (each told only its own --listen and --next)."""
    path, x = bundle
    _, exit_index = load_bundle(path, "onnx").run_exits(x)
    ports = [_port() for _ in range(3)]
    procs = []
    try:
        for m in range(3):
            cmd = [sys.executable, "-m", "jmsnas.serve", str(path), "--device", f"d{m}", "--listen",
                   f"127.0.0.1:{ports[m]}", "--timeout-ms", "500"]
            if m < 2:
                cmd += ["--next", f"127.0.0.1:{ports[m + 1]}", "--link", "100,1"]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        np.save(tmp_path / "x.npy", x.numpy())
        out = tmp_path / "runtime.json"
        rc = main([str(path), "--feed", f"127.0.0.1:{ports[0]}", "--reply", f"127.0.0.1:{_port()}", "--inputs",
                   str(tmp_path / "x.npy"), "--samples", str(len(x)), "--warmup", "0", "--out", str(out)])
        assert rc == 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
    assert_gone([p.pid for p in procs])
    report = json.loads(out.read_text())
    assert report["answered"] == len(x) and report["lost"] == 0
    assert [r["exit"] for r in report["per_sample"]] == exit_index.tolist()
    d1 = report["links"][0]
    assert d1["bandwidth_mbps"] > 0 and d1["measured_wire_mean_ms"] >= 0
    assert [d["emulated"] for d in report["devices"]] == [False, False, False]
