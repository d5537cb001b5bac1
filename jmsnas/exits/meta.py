"""Meta-information of a softmax output, paper 000 (ESAI) eqs. (2)-(5).

For a sample's softmax ``P = (P_1 .. P_N)`` with ``P_s`` sorted in descending order:

- (2) ``MP = max_i P_i``
- (3) ``margin = P_s(0) - P_s(1)``. The paper calls it "least confidence"; it is the top-2 margin
  (descending sort is what makes it >= 0 and matches Table I).
- (4) ``sum_i P_i ln P_i``: the paper's "entropy" as printed, without the minus sign, natural log
  (values <= 0; Table I truncates -0.3576 to -0.35). ``0 ln 0 := 0`` (``scipy.special.xlogy``).
- (5) ``std = sqrt(mean_i (P_i - 1/N)^2)``: the population standard deviation. Table I swaps the
  values of its two samples (0.12 / 0.4); the formula gives A = 0.402 and B = 0.125, and the text's
  "B is the more uncertain sample on every feature" needs B's std to be the smaller one.

Everything is float64: the features feed a threshold search whose endpoints are exact identities.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import xlogy

__all__ = ["FEATURES", "meta_features", "softmax64"]

FEATURES = ("max_prob", "margin", "sum_p_ln_p", "std")


def softmax64(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits [B, N]`` in float64 (paper 000 eq. (1) with temperature ``T``)."""
    z = logits.detach().double().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float64)
    z = z / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def meta_features(probs: np.ndarray) -> np.ndarray:
    """``[B, 4]`` float64: MP, top-2 margin, sum p ln p, population std (eqs. (2)-(5)) of ``probs [B, N]``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"meta_features needs probabilities of shape [B, N >= 2], got {p.shape}")
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    mp = top2[:, 0]
    margin = top2[:, 0] - top2[:, 1]
    plogp = xlogy(p, p).sum(axis=1)
    std = np.sqrt(((p - 1.0 / p.shape[1]) ** 2).mean(axis=1))
    return np.stack([mp, margin, plogp, std], axis=1)
