"""The ``exits`` section of an experiment: early-exit augmentation of a trained network (``jmsnas/exits/``).

It lives outside the package so that reading an experiment (``jmsnas search --check``) does not import
``jmsnas.exits``, which imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from jmsnas.validation import Strict


class DecisionUnitConfig(Strict):
    """Paper 000's decision unit (``jmsnas/exits/decision.py``): a binary classifier on softmax meta-information.

    With ``exits.decision: decision_unit`` each exit gets a unit, fitted on the calibration split; a
    sample leaves at the exit when the unit's certainty that the exit is right reaches the exit's
    threshold (paper 000's operating "sensitivity"), which the exits' own threshold search picks by
    the exits' ``objective``, as for the max-softmax rule. (Offloading to a separate server model with
    paper 000's objectives, best overall accuracy under a cap on the share sent or the mean latency,
    is ``jmsnas.exits.offload.choose_threshold``.)
    """

    model: Literal["mlp", "gbm"] = Field("mlp", description="4-hidden-layer MLP (paper) or gradient boosting")
    hidden: list[PositiveInt] = Field([64, 64, 32, 16], min_length=1, description="MLP hidden widths")
    epochs: PositiveInt = 200
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(1e-4, ge=0)
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="share of the validation split for early stopping")
    cross_fit_folds: int = Field(5, ge=0, description="the threshold search sees each calibration sample's certainty "
                                 "from a unit fitted on the other folds (0 or 1: the deployed unit's own, fitted on "
                                 "the same samples, which it rates too surely)")
    gbm_max_iter: PositiveInt = 200
    gbm_learning_rate: PositiveFloat = 0.05


class PredictorConfig(Strict):
    """Paper 004's Exit Predictor (``jmsnas/exits/predictor_fit.py``): a tiny network on the raw input, run first
    on the first device, that says which exits to compute for this sample; exported with the bundle and
    applied by the bundle runtime and ``serve`` (Algorithm 1)."""

    variant: Literal["ours", "plain", "fcs", "lenet"] = Field(
        "ours", description="paper 004 Fig. 6, without concatenation and SE, FCs only, LeNet-5")
    width: PositiveFloat = Field(1.0, description="scales every channel count (0.5: 8/16/32/64)")
    labels: Literal["train", "calibration"] = Field(
        "train", description="split whose eq. (9) labels it learns: the training split (paper) or the calibration "
        "split (then its gammas are chosen on its own training samples)")
    epochs: PositiveInt = 40
    batch_size: PositiveInt = 128
    lr: PositiveFloat = Field(0.1, description="SGD with cosine annealing, as paper 004")


class AdaptiveConfig(Strict):
    """Paper 004's bandwidth-adaptive thresholds (``jmsnas/exits/adaptive_fit.py``) on the cut after the last exit:
    eq. (10) solved on the calibration split at ``bandwidths_mbps``, one regressor per interval, in the bundle;
    ``serve --bandwidth-mbps`` applies them."""

    tau_ms: PositiveFloat | None = Field(None, description="mean eq. (11) latency to hold (default: the deployed "
                                         "thresholds' at the topology's bandwidth)")
    bandwidths_mbps: list[PositiveFloat] | None = Field(
        None, min_length=2, description="training bandwidths (default: 12 from 1/20 to 20 times the topology's)")
    intervals: PositiveInt = Field(3, description="bandwidth intervals, one regressor each")


class ExitsConfig(Strict):
    """Early-exit augmentation of a trained network (paper 001's flow; ``jmsnas/exits/``)."""

    max_head_mac_fraction: float = Field(0.05, gt=0, le=1, description="cap on one head's MACs, share of the backbone")
    thresholds_per_exit: int = Field(13, ge=2)
    objective: Literal["weighted", "accuracy_budget"] = "weighted"
    efficiency_weight: float = Field(0.9, ge=0, le=1)
    accuracy_weight: float = Field(0.1, ge=0, le=1)
    accuracy_budget_pp: float = Field(0.5, ge=0)
    accuracy_z: float = Field(2.0, ge=0, description="accuracy_budget: the loss plus this many standard errors of "
                              "the paired accuracy difference (Agresti-Min adjusted) must meet the budget (0: the "
                              "loss alone); 2 held a 1 pp budget on the test split in 10 of 10 seeds "
                              "(benchmarks/results/exit_budget.md), 1 in 8")
    joint_finetune: bool = False
    efficiency: Literal["macs", "latency"] = Field("macs", description="what the efficiency gain measures")
    final_thresholds_per_exit: int = Field(49, ge=2, description="finer grid of the second search on the chosen EENN")
    head_epochs: PositiveInt = 15
    head_lr: PositiveFloat = 3e-3
    feature_cache_bytes: int = Field(1 << 30, ge=0, description="cache backbone features when they fit (0: never)")
    min_head_accuracy_gain: float = Field(
        0.1, ge=0, lt=1, description="drop a head whose accuracy after one epoch is below majority rate + this")
    calibration: Literal["val", "train"] = Field("val", description="split the thresholds are searched on")
    # Paper 001 scales thresholds found on training data by 1, 2/3 or 1/2. On MNIST-1D an earlier
    # version of benchmarks/early_exit.py (its current results file does not repeat the comparison)
    # found 2/3 and 1/2 cost 2.7 and 4.2 pp more accuracy than 1 for 13-16 pp more MAC reduction,
    # as in paper 001's CIFAR-10 rows: 1 (no scaling) is the default.
    correction_factor: float = Field(1.0, gt=0, le=1, description="thresholds found on 'train' are scaled by it")
    loss_weights: list[PositiveFloat] | None = Field(
        None, description="joint fine-tuning: one weight per exit, final last (default: paper 004's 0.2/0.3/0.5 rule)")
    joint_epochs: PositiveInt = 1
    joint_lr: PositiveFloat = 0.005
    decision: Literal["threshold", "decision_unit"] = Field(
        "threshold", description="exit rule: max-softmax >= threshold (paper 001), or a learned decision unit "
        "(paper 000)")
    du: DecisionUnitConfig = Field(default_factory=DecisionUnitConfig, description="decision unit settings "
                                   "(used with decision: decision_unit)")
    predictor: PredictorConfig | None = Field(None, description="an Exit Predictor in front of the exits (paper 004); "
                                              "absent: every exit is computed for every sample that reaches it")
    adaptive: AdaptiveConfig | None = Field(None, description="bandwidth-adaptive thresholds (paper 004); absent: "
                                            "the thresholds are fixed")
    result_at: Literal["exit", "sink"] = Field(
        "exit", description="where an exited sample's answer is needed: on the exiting device, or at the last one")
