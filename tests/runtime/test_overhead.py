"""The runtime's own cost: the fit recovers set coefficients, reports add it per answering device, calibration runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_serve import build_exit_bundle

from jmsnas.errors import ArtifactError
from jmsnas.runtime.bundle import read_manifest
from jmsnas.runtime.links import LinkSpec, plan_links
from jmsnas.runtime.local import LocalRun
from jmsnas.runtime.overhead import (
    LAST_DEVICE_MS,
    TIMED_RTT_MS,
    RuntimeOverhead,
    fit_overhead,
    measure_overhead,
    timed_links_passed,
)
from jmsnas.runtime.report import Answer, runtime_report
from jmsnas.serve import main


def test_the_fit_recovers_hand_set_coefficients() -> None:
    rows = [(n, t, 0.3 + 0.6 * n + 0.15 * t) for n in (2, 3, 4) for t in (0, n - 1)]
    base, device, timed, rms = fit_overhead(rows)
    assert (base, device, timed) == pytest.approx((0.3, 0.6, 0.15), abs=1e-9)
    assert rms == pytest.approx(0.0, abs=1e-9)
    noisy = [(n, t, e + (0.1 if k % 2 else -0.1)) for k, (n, t, e) in enumerate(rows)]
    assert 0.01 < fit_overhead(noisy)[3] <= 0.1  # what it cannot explain, never more than the noise added
    with pytest.raises(ValueError, match="two lengths"):
        fit_overhead([(2, 0, 1.0), (3, 0, 1.5), (4, 0, 2.0)])  # never a timed link: its cost is not identifiable


def test_timed_links_are_those_whose_price_makes_the_sender_sleep() -> None:
    radio, bus = LinkSpec(0.1, 15.0), LinkSpec(4800.0, 0.0)
    # 160 bytes: on the bus 8 * 160 / 4.8e9 s = 0.00027 ms (no sleep); on the radio 7.5 + 12.8 ms
    assert timed_links_passed([bus, radio], [160.0, 160.0], 0) == 0
    assert timed_links_passed([bus, radio], [160.0, 160.0], 1) == 0
    assert timed_links_passed([bus, radio], [160.0, 160.0], 2) == 1
    assert timed_links_passed([radio, radio], [160.0, 0.0], 2) == 1  # nothing sent: no price


def test_a_saved_fit_round_trips_and_a_bad_file_names_itself(tmp_path: Path) -> None:
    fit = RuntimeOverhead(0.1, 0.5, 0.2, 0.01, {"processor": "x"}, [{"devices": 2}])
    loaded = RuntimeOverhead.load(fit.save(tmp_path / "o.json"))
    assert loaded == fit and loaded.predict(3, 1) == pytest.approx(0.1 + 1.5 + 0.2)
    (tmp_path / "bad.json").write_text(json.dumps({"base_ms": 1.0}))
    with pytest.raises(ArtifactError, match="calibrate-overhead") as e:
        RuntimeOverhead.load(tmp_path / "bad.json")
    assert "bad.json" in str(e.value)


def test_the_report_adds_the_runtimes_cost_up_to_the_answering_device(tmp_path: Path) -> None:
    bundle, _ = build_exit_bundle(tmp_path / "bundle")
    spec = read_manifest(bundle)
    links = plan_links(spec.plan)  # derived: each prices its cut at the plan's link_ms (>= 0.5 ms: timed)
    assert all(c.link_ms >= 0.5 for c in spec.plan.cuts)
    fit = RuntimeOverhead(0.5, 0.25, 0.125)
    answers = {0: Answer(0, 5.0, {"device": "d0", "exit": 0}, [], 0.1, 0.1, None),
               1: Answer(1, 9.0, {"device": "d2", "exit": 1}, [], 0.1, 0.1, None)}
    report = runtime_report(str(bundle), spec, "token", LocalRun(links=tuple(links), overhead=fit), links, answers,
                            2, 1.0, {"duplicates": 0, "refed": 0, "restarts": {}})
    s0, s1 = report["per_sample"]
    assert s0["predicted_with_overhead_ms"] - s0["predicted_ms"] == pytest.approx(0.5 + 0.25)  # one device
    assert s1["predicted_with_overhead_ms"] - s1["predicted_ms"] == pytest.approx(0.5 + 3 * 0.25 + 2 * 0.125)
    e = report["end_to_end"]
    with_oh = np.mean([s0["predicted_with_overhead_ms"], s1["predicted_with_overhead_ms"]])
    assert e["predicted_with_overhead_mean_ms"] == pytest.approx(with_oh)
    assert e["measured_over_predicted_with_overhead"] == pytest.approx(7.0 / with_oh)
    assert e["overhead"]["device_ms"] == 0.25
    plain = runtime_report(str(bundle), spec, "token", LocalRun(links=tuple(links)), links, answers, 2, 1.0,
                           {"duplicates": 0, "refed": 0, "restarts": {}})
    assert plain["end_to_end"]["predicted_with_overhead_mean_ms"] is None


def test_calibration_serves_chains_whose_plans_are_known(tmp_path: Path) -> None:
    """Three small chains, a few samples each, served twice (processes started and ended by ``serve_local``)."""
    fit = measure_overhead(samples=4, warmup=1, chains=((2, False), (3, False), (2, True)), work_dir=tmp_path,
                           repeats=2)
    plans = [c["plan_ms"] for c in fit.chains]
    assert plans[0] == pytest.approx(LAST_DEVICE_MS, abs=1e-3) and plans[1] == pytest.approx(LAST_DEVICE_MS, abs=1e-3)
    assert plans[2] == pytest.approx(LAST_DEVICE_MS + TIMED_RTT_MS / 2, abs=1e-3)  # plus the timed link's half trip
    assert [(c["devices"], c["timed_links"], c["samples"]) for c in fit.chains] == [(2, 0, 4), (3, 0, 4), (2, 1, 4)]
    assert all(np.isfinite([fit.base_ms, fit.device_ms, fit.timed_link_ms]))
    for c in fit.chains:  # a chain's row is the median of its runs' means (of two: their mean)
        assert c["runs"] == 2 and c["excess_mean_ms"] == pytest.approx(np.mean(c["excess_mean_ms_per_run"]))
    assert fit.residual_ms == pytest.approx(0.0, abs=1e-9)  # three chains, three coefficients: an exact fit
    assert fit.machine["processor"]


def test_the_cli_refuses_a_short_calibration_and_a_missing_bundle(capsys) -> None:
    assert main(["--calibrate-overhead", "--samples", "3"]) == 2
    assert "--samples" in capsys.readouterr().err
    assert main(["--local"]) == 2
    assert "BUNDLE" in capsys.readouterr().err
