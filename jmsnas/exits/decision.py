"""Decision units, paper 000 (ESAI) §III-B-2 and §IV-C: learned exit decisions on softmax meta-information.

A decision unit (DU) is a small binary classifier on an exit's meta-information (``meta.meta_features``,
eqs. (2)-(5)), trained on the **validation** split with the label "the exit classified this sample
correctly". Its output is ``certainty = P(exit correct | features)``; the exit answers when
``certainty > du_threshold`` (the paper's operating "sensitivity", strict ``>`` so 0 keeps every
sample and 1 sends every sample, as §IV-C's endpoints say). The positive class is "client correct":
Table III's DU accuracies follow from it (KD-NAS: 0.82 * 0.95 + 0.18 * 0.32 = 0.837, Table III 84 %),
not from the opposite reading (0.43).

Two models, as the paper: an MLP with 4 hidden layers (64-64-32-16, ReLU, sigmoid; Adam, lr 1e-3,
weight decay 1e-4, full batch, 200 epochs; the paper gives no sizes, these are the spec's defaults)
on standardised features, early-stopped on a hold-out share of the validation split; and a
gradient-boosting model (scikit-learn's ``HistGradientBoostingClassifier`` in place of XGBoost).

Storage is plain data, never a pickle: the MLP as its standardisation and layer weights (JSON
lists of the float32 values), evaluated in float64 numpy so that the unit needs no torch to run; the
GBM as its settings and the features and labels it was fitted on, refitted on load (the fit is
deterministic for a fixed ``random_state``, which a test checks). Certainties are clipped to
``[EPS, 1 - EPS]`` so the endpoint identities (s = 0 keeps all, s = 1 sends all) hold exactly.

In the exits stage (``exits.decision: decision_unit``) the unit's certainty takes the place of the
top-1 probability (``exit_score``): the threshold search, ``EarlyExitNet`` and the bundle runtime
compare it with the exit's threshold by ``>=``, as they do the top-1 probability. The search's
thresholds are observed certainties, so ``>=`` and paper 000's ``>`` give the same operating points
(shifted by one sample at a tie). ``offload`` keeps the paper's ``>`` for the server sweeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from jmsnas.devices import DeviceLike, on_device, to_device
from jmsnas.exits.meta import FEATURES, meta_features, softmax64
from jmsnas.exits_config import DecisionUnitConfig, ExitsConfig

__all__ = ["EPS", "DecisionUnit", "cross_fitted_scores", "du_metrics", "exit_score", "exit_units",
           "fit_decision_unit", "fit_exit_units", "load_decision_units"]

EPS = 1e-9


@dataclass
class DecisionUnit:
    """A fitted decision unit; ``certainty(probs)`` is its output on softmax probabilities.

    Args:
        kind: ``mlp``, ``gbm``, or ``constant`` (the fit data held one class only).
        mean, scale: feature standardisation (MLP).
        layers: ``(weight [out, in], bias [out])`` per linear layer (MLP), ReLU between, sigmoid last.
        gbm_params: ``HistGradientBoostingClassifier`` settings (GBM).
        fit_features, fit_labels: what the GBM was fitted on (it is refitted from them on load).
        constant: the certainty of a ``constant`` unit.
    """

    kind: Literal["mlp", "gbm", "constant"]
    mean: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURES)))
    scale: np.ndarray = field(default_factory=lambda: np.ones(len(FEATURES)))
    layers: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    gbm_params: dict[str, Any] = field(default_factory=dict)
    fit_features: np.ndarray | None = None
    fit_labels: np.ndarray | None = None
    constant: float = 0.5
    _gbm: Any = field(default=None, repr=False, compare=False)

    def certainty_from_features(self, feats: np.ndarray) -> np.ndarray:
        """P(exit correct) for meta-features ``[B, 4]``, float64, clipped to ``[EPS, 1 - EPS]``."""
        feats = np.asarray(feats, dtype=np.float64)
        if self.kind == "constant":
            out = np.full(len(feats), self.constant)
        elif self.kind == "mlp":
            h = (feats - self.mean) / self.scale
            for i, (w, b) in enumerate(self.layers):
                h = h @ w.astype(np.float64).T + b.astype(np.float64)
                if i < len(self.layers) - 1:
                    h = np.maximum(h, 0.0)
            out = 1.0 / (1.0 + np.exp(-h[:, 0]))
        else:
            out = self._fitted_gbm().predict_proba(feats)[:, 1]
        return np.clip(out, EPS, 1.0 - EPS)

    def certainty(self, probs: np.ndarray) -> np.ndarray:
        """P(exit correct) for softmax probabilities ``[B, N]``."""
        return self.certainty_from_features(meta_features(probs))

    def _fitted_gbm(self) -> Any:
        if self._gbm is None:
            from sklearn.ensemble import HistGradientBoostingClassifier

            self._gbm = HistGradientBoostingClassifier(**self.gbm_params).fit(self.fit_features, self.fit_labels)
        return self._gbm

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (lists and numbers) from which ``from_dict`` rebuilds the unit."""
        out: dict[str, Any] = {"kind": self.kind, "features": list(FEATURES)}
        if self.kind == "mlp":
            out |= {"mean": self.mean.tolist(), "scale": self.scale.tolist(),
                    "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers]}
        elif self.kind == "gbm":
            out |= {"gbm_params": dict(self.gbm_params), "fit_features": self.fit_features.tolist(),
                    "fit_labels": self.fit_labels.astype(int).tolist()}
        else:
            out["constant"] = self.constant
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionUnit:
        """The unit ``to_dict`` wrote (a ``ValueError`` names what is missing or wrong)."""
        kind = data.get("kind")
        if kind not in ("mlp", "gbm", "constant"):
            raise ValueError(f"decision unit kind must be 'mlp', 'gbm' or 'constant', got {kind!r}")
        if list(data.get("features", FEATURES)) != list(FEATURES):
            raise ValueError(f"decision unit features must be {list(FEATURES)}, got {data.get('features')}")
        try:
            if kind == "mlp":
                layers = [(np.asarray(la["weight"], np.float32), np.asarray(la["bias"], np.float32))
                          for la in data["layers"]]
                return cls("mlp", np.asarray(data["mean"], np.float64), np.asarray(data["scale"], np.float64), layers)
            if kind == "gbm":
                return cls("gbm", gbm_params=dict(data["gbm_params"]),
                           fit_features=np.asarray(data["fit_features"], np.float64),
                           fit_labels=np.asarray(data["fit_labels"], np.int64))
            return cls("constant", constant=float(data["constant"]))
        except KeyError as e:
            raise ValueError(f"decision unit of kind {kind!r} lacks the field {e.args[0]!r}") from None


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(n * holdout))
    if n_hold < 1 or n - n_hold < 1:
        return np.sort(perm), np.array([], dtype=np.int64)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def _fit_mlp(feats: np.ndarray, labels: np.ndarray, *, hidden: Sequence[int], epochs: int, lr: float,
             weight_decay: float, holdout: float, seed: int, device: DeviceLike = None) -> DecisionUnit:
    """Full-batch Adam on BCE (on ``device``; None: the CPU); the weights of the epoch with the lowest hold-out
    loss are kept."""
    fit_idx, hold_idx = _split(len(feats), holdout, seed)
    mean = feats[fit_idx].mean(axis=0)
    scale = feats[fit_idx].std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    x = torch.as_tensor((feats - mean) / scale, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        widths = [len(FEATURES), *hidden, 1]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
            mods += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
        net = nn.Sequential(*mods)
    with on_device(device, net) as dev:
        x, y = to_device(x, dev), to_device(y, dev)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        watch = hold_idx if len(hold_idx) else fit_idx
        best, best_state = float("inf"), None
        for _ in range(epochs):
            opt.zero_grad()
            loss_fn(net(x[fit_idx])[:, 0], y[fit_idx]).backward()
            opt.step()
            with torch.no_grad():
                held = float(loss_fn(net(x[watch])[:, 0], y[watch]))
            if held < best:
                best, best_state = held, [t.detach().clone() for t in net.state_dict().values()]
    assert best_state is not None
    best_state = [t.cpu() for t in best_state]
    layers = [(best_state[i].numpy().copy(), best_state[i + 1].numpy().copy()) for i in range(0, len(best_state), 2)]
    return DecisionUnit("mlp", mean, scale, layers)


def fit_decision_unit(probs: np.ndarray, correct: np.ndarray, *, model: Literal["mlp", "gbm"] = "mlp",
                      hidden: Sequence[int] = (64, 64, 32, 16), epochs: int = 200, lr: float = 1e-3,
                      weight_decay: float = 1e-4, holdout_fraction: float = 0.2, gbm_max_iter: int = 200,
                      gbm_learning_rate: float = 0.05, seed: int = 0, device: DeviceLike = None) -> DecisionUnit:
    """A decision unit fitted on an exit's validation softmax ``probs [B, N]`` and ``correct [B]`` (bool).

    Args:
        probs: the exit's softmax outputs on the validation split.
        correct: whether the exit's top-1 was the true label (the DU's positive class).
        model: ``mlp`` (4 hidden layers by default) or ``gbm``.
        hidden, epochs, lr, weight_decay, holdout_fraction: MLP settings (``DecisionUnitConfig``).
        gbm_max_iter, gbm_learning_rate: GBM settings.
        seed: initialisation, hold-out split and the GBM's ``random_state``.
        device: where the MLP trains (None: the CPU); the unit is plain numpy either way.
    """
    feats = meta_features(probs)
    labels = np.asarray(correct, dtype=bool)
    if len(labels) != len(feats):
        raise ValueError(f"{len(feats)} softmax rows but {len(labels)} labels")
    if labels.all() or not labels.any():
        return DecisionUnit("constant", constant=float(labels.mean()) if len(labels) else 0.5)
    if model == "mlp":
        return _fit_mlp(feats, labels, hidden=hidden, epochs=epochs, lr=lr, weight_decay=weight_decay,
                        holdout=holdout_fraction, seed=seed, device=device)
    params = {"max_iter": int(gbm_max_iter), "learning_rate": float(gbm_learning_rate), "early_stopping": False,
              "random_state": int(seed)}
    return DecisionUnit("gbm", gbm_params=params, fit_features=feats, fit_labels=labels.astype(np.int64))


def du_metrics(certainty: np.ndarray, correct: np.ndarray, at: float = 0.5) -> dict[str, float]:
    """Paper 000 Table III: DU accuracy, ROC-AUC, sensitivity (TPR on correct), specificity (TNR on wrong)."""
    from sklearn.metrics import roc_auc_score

    c = np.asarray(correct, dtype=bool)
    says = np.asarray(certainty) >= at
    both = c.any() and (~c).any()
    return {"accuracy": float((says == c).mean()),
            "auc": float(roc_auc_score(c, certainty)) if both else float("nan"),
            "sensitivity": float(says[c].mean()) if c.any() else float("nan"),
            "specificity": float((~says[~c]).mean()) if (~c).any() else float("nan")}


def exit_score(logits: torch.Tensor, unit: DecisionUnit | None) -> torch.Tensor:
    """What an exit's threshold is compared with: the top-1 softmax probability (float64) without a decision
    unit (paper 001 / 004), the unit's certainty on the logits' meta-features with one (paper 000)."""
    if unit is None:
        return torch.softmax(logits.detach().double(), dim=-1).amax(dim=-1)
    return torch.from_numpy(unit.certainty(softmax64(logits))).to(logits.device)


def fit_exit_units(logits: Mapping[int, torch.Tensor], labels: torch.Tensor, cfg: DecisionUnitConfig,
                   seed: int = 0, device: DeviceLike = None) -> dict[int, DecisionUnit]:
    """One decision unit per exit, fitted on its calibration ``logits`` against ``labels`` (the ``exits.du``
    settings; CPU tensors); MLP units train on ``device`` (None: the CPU)."""
    settings = _settings(cfg, seed, device)
    return {loc: fit_decision_unit(softmax64(z), (z.argmax(1) == labels).numpy(), **settings)
            for loc, z in logits.items()}


def exit_units(logits: Mapping[int, torch.Tensor], labels: torch.Tensor, cfg: ExitsConfig, seed: int = 0,
               device: DeviceLike = None) -> tuple[dict[int, DecisionUnit], dict[int, np.ndarray]]:
    """What the exits stage searches with: with ``exits.decision: decision_unit``, each exit's unit (fitted on
    every calibration sample) and the cross-fitted scores; with the max-softmax rule, nothing."""
    if cfg.decision != "decision_unit":
        return {}, {}
    return (fit_exit_units(logits, labels, cfg.du, seed, device),
            cross_fitted_scores(logits, labels, cfg.du, seed, device))


def _settings(cfg: DecisionUnitConfig, seed: int, device: DeviceLike) -> dict[str, Any]:
    return {"model": cfg.model, "hidden": cfg.hidden, "epochs": cfg.epochs, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "holdout_fraction": cfg.holdout_fraction,
            "gbm_max_iter": cfg.gbm_max_iter, "gbm_learning_rate": cfg.gbm_learning_rate, "seed": seed,
            "device": device}


def cross_fitted_scores(logits: Mapping[int, torch.Tensor], labels: torch.Tensor, cfg: DecisionUnitConfig,
                        seed: int = 0, device: DeviceLike = None) -> dict[int, np.ndarray]:
    """Per exit, every calibration sample's certainty from a unit fitted on the other ``cfg.cross_fit_folds``
    folds (cross-fitting; empty with fewer than 2 folds).

    Why: a unit scores the samples it was fitted on too surely (it has learnt which of them the exit got
    wrong), so thresholds searched on its own certainties promise less accuracy loss than unseen samples
    show; ``benchmarks/exit_budget.py`` measured it. The deployed unit is still the one fitted on every
    sample (``fit_exit_units``); the search only judges thresholds on scores no unit was fitted on.
    """
    if cfg.cross_fit_folds < 2:
        return {}
    settings = _settings(cfg, seed, device)
    out = {}
    for loc, z in logits.items():
        probs, correct = softmax64(z), (z.argmax(1) == labels).numpy()
        n = len(correct)
        scores = np.empty(n, dtype=np.float64)
        for held in np.array_split(np.random.default_rng(seed).permutation(n), min(cfg.cross_fit_folds, n)):
            rest = np.setdiff1d(np.arange(n), held)
            scores[held] = fit_decision_unit(probs[rest], correct[rest], **settings).certainty(probs[held])
        out[loc] = scores
    return out


def load_decision_units(run_dir: str | Path) -> dict[int, DecisionUnit]:
    """Per exit unit, the decision unit ``augment`` saved in ``heads.json`` (none for max-softmax exits).

    Raises:
        ConfigError: ``heads.json`` missing, unreadable, or with a malformed ``decision_unit`` (file and field named).
    """
    import json

    from jmsnas.errors import ConfigError

    path = Path(run_dir) / "heads.json"
    try:
        entries = json.loads(path.read_text())["exits"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the exits of heads.json ({exc})", file=path) from exc
    out = {}
    for i, entry in enumerate(entries):
        if entry.get("decision_unit") is not None:
            try:
                out[int(entry["unit"])] = DecisionUnit.from_dict(entry["decision_unit"])
            except (ValueError, TypeError) as exc:
                raise ConfigError(str(exc), file=path, field=f"exits[{i}].decision_unit") from None
    return out
