"""Exit Predictor (paper 004): the paper's own numbers, Algorithm 1 batched vs a per-sample loop, eq. (4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from exits_specs import mnist1d_dm, predictor_bundle, two_exit_cascade

from jmsnas.exits.cascade import MacCounter
from jmsnas.exits.predictor import ExitPredictor, PredictorTraining, exit_labels, train_predictor
from jmsnas.exits.skip import ExitParts, SkippingCascade, choose_gamma, route
from jmsnas.exits.thresholds import confidence
from jmsnas.space.macs import count_macs


@pytest.mark.parametrize(("variant", "macs"), [("plain", 290_816), ("ours", 391_808), ("fcs", 393_472),
                                                ("lenet", 651_048)])
def test_predictor_macs_match_paper_table_ii(variant: str, macs: int) -> None:
    # conv + linear MACs at 3x32x32 with two early exits, worked out by hand in the spec (B.4)
    assert count_macs(ExitPredictor((3, 32, 32), 2, variant), (3, 32, 32)) == macs


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8), (3, 17, 9)])
@pytest.mark.parametrize("variant", ["ours", "plain", "fcs", "lenet"])
def test_predictor_builds_for_1d_and_2d_inputs(shape: tuple[int, ...], variant: str) -> None:
    out = ExitPredictor(shape, 3, variant, width=0.5)(torch.randn(4, *shape))
    assert out.shape == (4, 3)


def test_unknown_variant_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="ours, plain, fcs, lenet"):
        ExitPredictor((1, 40), 2, "vgg")


def _table_v_confidences() -> np.ndarray:
    # 10,000 samples: 6,662 confident at exit 1, 1,981 (of the rest) at exit 2, 1,357 at neither
    c = np.zeros((10_000, 2))
    c[:6662, 0] = 1.0
    c[6662:6662 + 1981, 1] = 1.0
    return c


def test_eq3_and_oracle_reproduce_paper_004_vgg16_numbers() -> None:
    parts = ExitParts(segments=[1.97, 56.98], heads=[16.70, 14.23])  # Table V, VGG16-BN, CIFAR-10 (MFLOPs)
    c = _table_v_confidences()
    ee = route(c, [0.99, 0.99]).device_cost(parts).mean()
    oracle = route(c, [0.99, 0.99], mode="oracle")
    assert ee == pytest.approx(42.44, abs=0.01)
    assert oracle.device_cost(parts).mean() == pytest.approx(34.93, abs=0.01)
    server = 333.08 - 1.97 - 56.98
    assert ee + 0.1357 * server == pytest.approx(79.64, abs=0.01)
    assert oracle.device_cost(parts).mean() + 0.1357 * server == pytest.approx(72.13, abs=0.01)
    assert oracle.skip_fraction() == pytest.approx([0.3338, 0.1357])  # the paper's ideal skip fractions


def test_eq4_with_gamma_zero_is_eq3_plus_predictor_and_indicator_scores_are_the_oracle() -> None:
    rng = np.random.default_rng(0)
    c, s = rng.random((500, 3)), rng.random((500, 3))
    parts = ExitParts(segments=[3.0, 5.0, 7.0], heads=[2.0, 1.0, 4.0], predictor=0.5)
    lam = [0.6, 0.5, 0.7]
    ee = route(c, lam)
    ep0 = route(c, lam, mode="ep", scores=s, gammas=[0.0] * 3)
    assert np.allclose(ep0.device_cost(parts), ee.device_cost(parts) + 0.5)
    assert (ep0.exit_index == ee.exit_index).all()
    ind = route(c, lam, mode="ep", scores=(c >= lam).astype(float), gammas=[0.5] * 3)
    assert np.allclose(ind.device_cost(parts), route(c, lam, mode="oracle").device_cost(parts) + 0.5)


def test_route_matches_eq4_written_out() -> None:
    rng = np.random.default_rng(1)
    c, s = rng.random((300, 2)), rng.random((300, 2))
    lam, gam = [0.5, 0.4], [0.3, 0.6]
    o_ep, l1, e1, l2, e2 = 0.25, 1.0, 2.0, 4.0, 8.0
    got = route(c, lam, mode="ep", scores=s, gammas=gam).device_cost(ExitParts([l1, l2], [e1, e2], o_ep))
    comp1, comp2 = s[:, 0] >= gam[0], s[:, 1] >= gam[1]
    not_left = 1 - comp1 * (c[:, 0] >= lam[0])
    want = (o_ep + l1) + e1 * comp1 + (l2 + e2 * comp2) * not_left  # eq. (4) for N - 1 = 2
    assert np.allclose(got, want)


def test_batched_algorithm1_equals_a_per_sample_loop_and_counts_eq4_macs() -> None:
    x = torch.stack([mnist1d_dm().test_set[i][0] for i in range(60)])
    probe = two_exit_cascade([2.0, 2.0])  # outside no_grad: the first call trains the backbone
    with torch.no_grad():
        every = probe.all_exits(x)
    lam = [float(confidence(every[0]).median()), float(confidence(every[1]).quantile(0.3))]
    net = two_exit_cascade(lam)
    torch.manual_seed(1)
    ep = ExitPredictor((1, 40), 2, "ours", width=0.5).eval()
    with torch.no_grad():
        s = torch.sigmoid(ep(x))
    gam = [float(s[:, 0].median()), float(s[:, 1].quantile(0.4))]
    cascade = SkippingCascade(net, ep, gam).eval()
    with MacCounter(cascade) as counter, torch.no_grad():
        logits, idx, computed = cascade(x)
    c = torch.stack([confidence(e) for e in every[:2]], dim=1)
    for i in range(len(x)):  # Algorithm 1, one sample at a time, from every exit's logits
        k = next((k for k in range(2) if s[i, k] >= gam[k] and c[i, k] >= lam[k]), 2)
        assert int(idx[i]) == k
        assert torch.allclose(logits[i], every[k][i], atol=1e-5)
        assert computed[i].tolist() == [bool(s[i, n] >= gam[n]) and n <= k for n in range(2)]
    r = route(c.numpy(), lam, mode="ep", scores=s.numpy(), gammas=gam)
    assert (r.exit_index == idx.numpy()).all() and (r.computed == computed.numpy()).all()
    parts = ExitParts(net.segment_macs[:2], net.head_macs, count_macs(ep, (1, 40)))
    predicted = r.device_cost(parts).sum() + r.reaches_final.sum() * net.segment_macs[-1]
    assert counter.macs == int(predicted)  # executed MACs = eq. (4) on the device + the server's segment
    assert 0 < r.computed[:, 0].sum() < len(x) and set(idx.tolist()) == {0, 1, 2}


def test_labels_and_training_learn_a_learnable_rule() -> None:
    torch.manual_seed(0)
    x = torch.randn(600, 1, 40)
    c = torch.stack([torch.sigmoid(x.mean(dim=(1, 2)) * 8), torch.sigmoid(-x[:, 0, :5].mean(1) * 4)], dim=1)
    y = exit_labels(c, [0.5, 0.5])
    assert y.tolist() == (c >= 0.5).float().tolist()
    ep = train_predictor(ExitPredictor((1, 40), 2, "fcs"), x[:500], y[:500], PredictorTraining(epochs=30, lr=0.05))
    with torch.no_grad():
        acc = ((ep(x[500:]) > 0).float() == y[500:]).float().mean()
    assert acc > 0.85  # both labels are linear in the input


def test_choose_gamma_meets_the_criterion_and_never_costs_more_than_no_skipping() -> None:
    rng = np.random.default_rng(2)
    c = rng.random((800, 2))
    s = np.clip((c >= [0.7, 0.6]) * 0.7 + rng.normal(0.15, 0.15, c.shape), 0, 1)  # an informative predictor
    parts = ExitParts([1.0, 4.0], [2.0, 2.0], predictor=0.1)
    gam, cost = choose_gamma(c, s, [0.7, 0.6], parts)
    base = route(c, [0.7, 0.6])
    chosen = route(c, [0.7, 0.6], mode="ep", scores=s, gammas=gam)
    assert chosen.reaches_final.mean() - base.reaches_final.mean() < 0.02
    assert cost == pytest.approx(chosen.device_cost(parts).mean())
    assert cost < base.device_cost(parts).mean()  # an informative predictor pays for itself here


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_exported_predictor_bundle_runs_algorithm1_as_the_in_processtwo_exit_cascade(backend: str, tmp_path) -> None:
    """A bundle exported with the Exit Predictor decides, sample by sample, as ``SkippingCascade``: same exits,
    same logits, the same heads computed; a skipped head is not run (the skip part has no head)."""
    from jmsnas.runtime.bundle import load_bundle

    b = predictor_bundle(tmp_path)
    x, s, gam, idx, computed = b["x"], b["s"], b["gammas"], b["exit_index"], b["computed"]
    bundle = load_bundle(tmp_path, backend)
    assert bundle.spec.predictor is not None and bundle.spec.predictor.macs == count_macs(b["predictor"], (1, 40))
    got_computed = torch.zeros_like(computed)
    got, got_idx = bundle.run_exits(x, got_computed)
    tol = 1e-5 if backend == "torchscript" else 1e-4
    sure = ((s - torch.tensor(gam)).abs() > 1e-4).all(1)  # ONNX's float32 may flip a score sitting on its gamma
    assert sure.sum() >= 50
    assert (got_idx[sure] == idx[sure]).all() and (got_computed[sure] == computed[sure]).all()
    assert torch.allclose(got[sure], b["logits"][sure], atol=tol)
    assert 0 < int(computed[:, 0].sum()) < len(x) and set(idx.tolist()) == {0, 1, 2}
    skip = bundle.skip_runners[0]((x[:3],))
    assert len(skip) == len(bundle.runners[0]((x[:3],))) - 1  # no logits: the head is not in the skip part
    torch.testing.assert_close(skip[0], bundle.runners[0]((x[:3],))[1], atol=tol, rtol=0)


def test_predictor_bundle_without_skip_parts_is_refused(tmp_path) -> None:
    """A manifest whose predictor has no skip part for an exit fails to load, naming the field."""
    import json

    from jmsnas.errors import BundleError
    from jmsnas.export.writer import export_bundle
    from jmsnas.runtime.bundle import load_bundle

    b = predictor_bundle(tmp_path / "b", samples=8)
    net, plan, ep = b["net"], b["plan"], b["predictor"]
    with pytest.raises(ValueError, match="one gamma per exit"):
        export_bundle(list(net.segments), plan, b["x"][:2], tmp_path / "a", exits={0: (net.heads[0], 0.5)},
                      predictor=(ep, [0.1, 0.2]))
    path = tmp_path / "b" / "manifest.json"
    data = json.loads(path.read_text())
    del data["parts"][1]["exit"]["skip_files"]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="skip_files") as info:
        load_bundle(tmp_path / "b")
    assert "predictor" in str(info.value)


def test_plan_with_predictor_prices_skipped_heads_and_the_predictor_by_hand() -> None:
    """Two exits (latency 3 and 7 ms, heads 1 and 2 ms), worst 10 ms, predictor 0.5 ms; four samples:
    leave at exit 0; skip exit 0 and leave at exit 1 (saves 1 ms); skip both (saves 3 ms); compute both
    and reach the final classifier."""
    from jmsnas.exits.predictor_fit import plan_with_predictor
    from jmsnas.plan.artifact import DeploymentPlan, DeviceSegment, ExitPlan

    conf = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.9], [0.1, 0.1]])
    scores = np.array([[0.9, 0.9], [0.1, 0.9], [0.1, 0.1], [0.9, 0.9]])
    r = route(conf, [0.5, 0.5], mode="ep", scores=scores, gammas=[0.5, 0.5])
    assert r.exit_index.tolist() == [0, 1, 2, 2]
    segs = tuple(DeviceSegment(n, "main", m, m + 1, 1.0) for m, n in enumerate(["a", "b", "c"]))
    plan = DeploymentPlan("chain", segs, (), 10.0).with_exits(
        [ExitPlan("a", 1, 0.5, 10, 3.0, 0.5), ExitPlan("b", 2, 0.5, 10, 7.0, 0.25)], 10.0, 6.0)
    priced = plan_with_predictor(plan, r, [1.0, 2.0], 0.5)
    expected = np.mean([3.0, 7.0 - 1.0, 10.0 - 3.0, 10.0]) + 0.5
    assert priced.mean_latency_ms == pytest.approx(expected)
    assert priced.total_latency_ms == pytest.approx(10.5)
    assert [e.termination_rate for e in priced.exits] == [0.25, 0.25]
    assert [e.latency_ms for e in priced.exits] == [3.0, 7.0]
