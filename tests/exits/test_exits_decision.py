"""Paper 000 (ESAI): meta-features against Table I, eq. (6)/(7) against identities and a per-sample loop,
decision units (MLP, GBM) fitted, stored as plain data and rebuilt with the same decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jmsnas.exits.decision import EPS, DecisionUnit, du_metrics, fit_decision_unit
from jmsnas.exits.meta import meta_features, softmax64
from jmsnas.exits.offload import choose_threshold, offload_sweep, overall_accuracy, two_exit_accuracy, two_exit_grid


def test_table_one_features_with_the_corrected_std() -> None:
    probs = np.array([[0.9, 0.09, 0.01], [0.2, 0.5, 0.3]])
    f = meta_features(probs)
    # hand-computed: sum p ln p = 0.9 ln 0.9 + 0.09 ln 0.09 + 0.01 ln 0.01; std over N = 3 around 1/3
    a_plogp = 0.9 * np.log(0.9) + 0.09 * np.log(0.09) + 0.01 * np.log(0.01)
    b_plogp = 0.2 * np.log(0.2) + 0.5 * np.log(0.5) + 0.3 * np.log(0.3)
    np.testing.assert_allclose(f[0], [0.9, 0.81, a_plogp, np.sqrt(((0.9 - 1 / 3) ** 2 + (0.09 - 1 / 3) ** 2
                                                                  + (0.01 - 1 / 3) ** 2) / 3)], atol=1e-12)
    np.testing.assert_allclose(f[0], [0.9, 0.81, -0.3576, 0.402], atol=5e-4)
    np.testing.assert_allclose(f[1], [0.5, 0.2, b_plogp, 0.125], atol=5e-4)
    np.testing.assert_allclose(f[1, 2], -1.0297, atol=5e-5)
    assert f.dtype == np.float64


def test_zero_probabilities_and_softmax() -> None:
    f = meta_features(np.array([[1.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(f[0], [1.0, 1.0, 0.0, np.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 4)])
    p = softmax64(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="N >= 2"):
        meta_features(np.ones((3, 1)))


def _case(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random(n), rng.random(n) < 0.7, rng.random(n) < 0.8


def test_eq6_endpoints_are_the_client_and_the_server_exactly() -> None:
    u, c, s = _case()
    u = np.clip(u, EPS, 1 - EPS)
    at0, at1 = overall_accuracy(u, c, s, 0.0), overall_accuracy(u, c, s, 1.0)
    assert at0.overall_acc == c.mean() and at0.offload_fraction == 0.0
    assert at1.overall_acc == s.mean() and at1.offload_fraction == 1.0
    sweep = offload_sweep(u, c, s)
    assert sweep.overall_acc[0] == c.mean() and sweep.overall_acc[-1] == s.mean()


def _reference(u, c, s, t):
    tn = sp = sent = 0
    for ui, ci, si in zip(u, c, s, strict=True):
        if ui > t:
            tn += int(ci)
        else:
            sent += 1
            sp += int(si)
    return tn, sp, sent


def test_sweep_counts_equal_a_per_sample_loop_at_every_threshold() -> None:
    u, c, s = _case(200, 3)
    u = np.round(u, 2)  # ties
    sweep = offload_sweep(u, c, s)
    for i, t in enumerate(sweep.thresholds):
        tn, sp, sent = _reference(u, c, s, t)
        p = sweep.point(i)
        assert (p.kept_correct, p.sent_correct, p.sent) == (tn, sp, sent)
        assert p == overall_accuracy(u, c, s, t)


def test_eq7_grid_against_a_per_sample_loop() -> None:
    rng = np.random.default_rng(1)
    n = 150
    u1, u2 = np.round(rng.random(n), 1), rng.random(n)
    c1, c2, sc = rng.random(n) < 0.5, rng.random(n) < 0.7, rng.random(n) < 0.8
    g1, g2 = np.linspace(0, 1, 11), np.linspace(0, 1, 6)
    grid = two_exit_grid(u1, c1, u2, c2, sc, g1, g2)
    for i, s1 in enumerate(g1):
        for j, s2 in enumerate(g2):
            right = at1 = at2 = 0
            for k in range(n):
                if u1[k] > s1:
                    right, at1 = right + c1[k], at1 + 1
                elif u2[k] > s2:
                    right, at2 = right + c2[k], at2 + 1
                else:
                    right += sc[k]
            assert grid["overall_acc"][i, j] == right / n
            assert grid["f_exit1"][i, j] == at1 / n and grid["f_exit2"][i, j] == at2 / n
            assert two_exit_accuracy(u1, c1, u2, c2, sc, s1, s2).overall_acc == right / n
    # s1 = 1 and s2 = 0: all at exit 2; s1 = 0: all at exit 1; s1 = s2 = 1: all at the server
    assert grid["overall_acc"][-1, 0] == c2.mean() and grid["overall_acc"][-1, -1] == sc.mean()


def test_choose_threshold_objectives() -> None:
    u, c, s = _case(400, 5)
    sweep = offload_sweep(u, c, s)
    best = choose_threshold(u, c, s)
    assert best.overall_acc == sweep.overall_acc.max()
    capped = choose_threshold(u, c, s, objective="max_offload", max_offload_fraction=0.2)
    feasible = sweep.offload_fraction <= 0.2
    assert capped.offload_fraction <= 0.2 and capped.overall_acc == sweep.overall_acc[feasible].max()
    lat = choose_threshold(u, c, s, objective="max_latency", max_mean_latency_ms=12.0, client_ms=10.0,
                           offload_ms=10.0)
    assert lat.mean_latency_ms(10.0, 10.0) <= 12.0 and lat.overall_acc == sweep.overall_acc[feasible].max()
    none = choose_threshold(u, c, s, objective="max_latency", max_mean_latency_ms=5.0, client_ms=10.0,
                            offload_ms=10.0)
    assert none.offload_fraction == 0.0


def _separable(n: int = 600, seed: int = 0):
    """Softmax rows whose confidence predicts correctness: confident rows right, flat rows mostly wrong."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5)) * rng.uniform(0.2, 4.0, size=(n, 1))
    p = softmax64(z)
    correct = rng.random(n) < meta_features(p)[:, 0]
    return p, correct


@pytest.mark.parametrize("model", ["mlp", "gbm"])
def test_decision_unit_learns_and_round_trips_through_plain_json(model: str) -> None:
    p, correct = _separable()
    du = fit_decision_unit(p, correct, model=model, epochs=150, gbm_max_iter=50, seed=0)
    u = du.certainty(p)
    assert ((u >= EPS) & (u <= 1 - EPS)).all()
    assert du_metrics(u, correct)["auc"] > 0.7
    back = DecisionUnit.from_dict(json.loads(json.dumps(du.to_dict())))
    np.testing.assert_array_equal(back.certainty(p), u)
    again = fit_decision_unit(p, correct, model=model, epochs=150, gbm_max_iter=50, seed=0)
    np.testing.assert_array_equal(again.certainty(p), u)


def test_decision_unit_degenerate_labels_and_bad_data() -> None:
    p, _ = _separable(50)
    du = fit_decision_unit(p, np.ones(50, dtype=bool))
    assert du.kind == "constant" and overall_accuracy(du.certainty(p), np.ones(50), np.zeros(50), 0.5).kept == 50
    with pytest.raises(ValueError, match="kind"):
        DecisionUnit.from_dict({"kind": "pickle"})
    with pytest.raises(ValueError, match="layers"):
        DecisionUnit.from_dict({"kind": "mlp", "mean": [0] * 4, "scale": [1] * 4})


def test_du_metrics_table_three_definitions() -> None:
    u = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    c = np.array([True, True, True, False, False])
    m = du_metrics(u, c)
    assert m["sensitivity"] == 2 / 3 and m["specificity"] == 1 / 2 and m["accuracy"] == 3 / 5


def test_experiment_decision_options_validate(tiny_experiment, write_experiment) -> None:
    from jmsnas.config import load_experiment
    from jmsnas.errors import ConfigError

    exp = load_experiment(write_experiment(tiny_experiment))
    assert exp.config.exits is None or exp.config.exits.decision == "threshold"
    tiny_experiment["exits"] = {"decision": "decision_unit",
                                "du": {"model": "gbm", "gbm_max_iter": 50}}
    cfg = load_experiment(write_experiment(tiny_experiment)).config.exits
    assert cfg.decision == "decision_unit" and cfg.du.model == "gbm"
    for bad, where in (({"decision": "learned"}, "exits.decision"),
                       ({"du": {"model": "xgboost"}}, "exits.du.model"),
                       ({"du": {"hidden": []}}, "exits.du.hidden"),
                       ({"du": {"sensitivity": 0.5}}, "exits.du.sensitivity")):
        tiny_experiment["exits"] = bad
        with pytest.raises(ConfigError) as info:
            load_experiment(write_experiment(tiny_experiment))
        assert where in str(info.value) and "exp" in str(info.value)


@pytest.mark.parametrize("model", ["mlp", "gbm"])
def test_cross_fitted_scores_do_not_see_their_own_sample(model: str) -> None:
    """A sample's cross-fitted certainty comes from a unit fitted without it: flipping whether the exit got that
    sample right leaves its own score unchanged and moves the scores of the samples in the other folds."""
    import torch

    from jmsnas.exits.decision import cross_fitted_scores
    from jmsnas.exits_config import DecisionUnitConfig

    rng = np.random.default_rng(3)
    z = torch.as_tensor(rng.normal(size=(120, 5)) * rng.uniform(0.5, 3.0, size=(120, 1)))
    labels = torch.as_tensor(np.where(rng.random(120) < 0.7, z.argmax(1).numpy(), (z.argmax(1).numpy() + 1) % 5))
    cfg = DecisionUnitConfig(model=model, epochs=40, gbm_max_iter=20, cross_fit_folds=4)
    before = cross_fitted_scores({3: z}, labels, cfg, seed=0)[3]
    flipped = labels.clone()
    i = 7
    flipped[i] = (z[i].argmax() + 1) % 5 if labels[i] == z[i].argmax() else z[i].argmax()
    after = cross_fitted_scores({3: z}, flipped, cfg, seed=0)[3]
    assert after[i] == before[i]
    assert (after != before).sum() > 0
    own = fit_decision_unit(softmax64(z), (z.argmax(1) == labels).numpy(), model=model, epochs=40, gbm_max_iter=20)
    assert before.shape == (120,) and not np.array_equal(before, own.certainty(softmax64(z)))
    assert cross_fitted_scores({3: z}, labels, cfg.model_copy(update={"cross_fit_folds": 1})) == {}
