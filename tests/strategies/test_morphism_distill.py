"""The distillation loss against hand-computed values, and the child system that trains on it."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from jmsnas.distill import distillation_loss, soft_kd_loss
from jmsnas.strategies.children import ChildData, WithTeacher, fit


def _softmax(v: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_kd_loss_matches_hand_computation() -> None:
    s = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    t = [[1.0, 3.0, 0.0], [-2.0, 0.0, 4.0]]
    y = [0, 2]
    temp, w = 4.0, 0.7
    kl = 0.0
    for srow, trow in zip(s, t, strict=True):
        p, q = _softmax(trow, temp), _softmax(srow, temp)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    soft = kl / 2 * temp**2
    ce = -sum(math.log(_softmax(srow, 1.0)[yi]) for srow, yi in zip(s, y, strict=True)) / 2
    args = torch.tensor(s), torch.tensor(t)
    assert float(soft_kd_loss(*args, temp)) == pytest.approx(soft, rel=1e-5)
    loss, parts = distillation_loss(*args, torch.tensor(y), temp, w)
    assert float(loss) == pytest.approx(w * soft + (1 - w) * ce, rel=1e-5)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-5) and float(parts["kd"]) == pytest.approx(soft, rel=1e-5)


def test_kd_loss_golden_value() -> None:
    # T = 2; teacher logits (2 ln 3, 0) soften to p = (3/4, 1/4); student logits (0, 0) to q = (1/2, 1/2).
    # KL(p || q) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120; times T^2 = 0.5232481. CE(s, y=0) = ln 2 = 0.6931472.
    # With kd_weight 0.5: 0.5 * 0.5232481 + 0.5 * 0.6931472 = 0.6081976.
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * math.log(3.0), 0.0]])
    assert float(soft_kd_loss(student, teacher, 2.0)) == pytest.approx(0.5232481, abs=1e-6)
    loss, _ = distillation_loss(student, teacher, torch.tensor([0]), 2.0, 0.5)
    assert float(loss) == pytest.approx(0.6081976, abs=1e-6)


def test_kd_loss_limits() -> None:
    logits = torch.randn(5, 4)
    assert float(soft_kd_loss(logits, logits.clone(), 20.0)) == pytest.approx(0.0, abs=1e-6)
    y = torch.randint(0, 4, (5,))
    hard, _ = distillation_loss(logits, torch.randn(5, 4), y, 20.0, 0.0)
    assert float(hard) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))
    with pytest.raises(ValueError, match="kd_weight"):
        distillation_loss(logits, logits, y, 20.0, 1.5)
    student = logits.clone().requires_grad_()
    soft_kd_loss(student, torch.randn(5, 4), 20.0).backward()  # gradients reach the student only
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_fit_scores_by_softened_validation_loss() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8), torch.randint(0, 3, (64,))
    teacher = torch.randn(64, 3)
    data = WithTeacher(TensorDataset(x, y), teacher)
    cfg = dict(batch_size=16, epochs=1, lr=0.05, weight_decay=0.0, temperature=5.0, kd_weight=1.0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    score, acc = fit(model, ChildData(train=data, val=data, use_kd=True, **cfg), seed=0)
    with torch.no_grad():  # after training, the score is the soft loss on the validation data
        assert score == pytest.approx(float(soft_kd_loss(model(x), teacher, 5.0)), rel=1e-4)
    plain = ChildData(train=TensorDataset(x, y), val=TensorDataset(x, y), use_kd=False, **cfg)
    score, acc = fit(model, plain, seed=0)
    with torch.no_grad():
        assert score == pytest.approx(float(torch.nn.functional.cross_entropy(model(x), y)), rel=1e-4)
    assert 0.0 <= acc <= 1.0
