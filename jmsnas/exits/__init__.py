"""Early exits: turn a trained network into an early-exit network for a chain of devices (paper 001's flow).

- ``graph``: block-level graph (residual blocks collapsed), MACs / parameters / output size per block,
  candidate exit locations, the classifier blueprint.
- ``heads``: exit heads from the model's own classifier, downsampled by rule, under a MAC cap.
- ``candidates``: EENN candidates (exits at device boundaries) with worst-case and mean latency and
  memory, pruned before training.
- ``train``: all heads on the frozen backbone at once (features cached), early dropping; joint fine-tuning.
- ``thresholds``: exact vectorised cascade evaluation, Bellman-Ford over exit x threshold nodes, objectives
  (``cascade_stats``: what a search works on and returns).
- ``cascade``: ``EarlyExitNet``, which runs exits for real (per-sample masks) and counts executed MACs.
- ``meta``, ``decision``, ``offload``: paper 000's softmax meta-features (eqs. (2)-(5)), decision units
  (MLP or gradient boosting, plain JSON), overall accuracy with offloading (eqs. (6), (7)).
- ``costs``: unit and head latency per device (the experiment's ``exits`` section is ``jmsnas.exits_config``).
- ``augment``: the whole flow, one call; ``result``: the result; ``export``: plan with exits, export.
"""

from __future__ import annotations

from jmsnas.exits.augment import augment, load_heads, save_result
from jmsnas.exits.candidates import Placement, enumerate_placements
from jmsnas.exits.cascade import EarlyExitNet, MacCounter
from jmsnas.exits.export import export_eenn, plan_with_exits
from jmsnas.exits.graph import BlockGraph, ClassifierBlueprint, block_graph
from jmsnas.exits.heads import ExitHead, HeadConfig, build_exit_head
from jmsnas.exits.result import Evaluation, ExitsResult
from jmsnas.exits.thresholds import CascadeStats, Objective, bellman_ford, exhaustive, search_thresholds

__all__ = [
    "BlockGraph",
    "CascadeStats",
    "ClassifierBlueprint",
    "EarlyExitNet",
    "Evaluation",
    "ExitHead",
    "ExitsResult",
    "HeadConfig",
    "MacCounter",
    "Objective",
    "Placement",
    "augment",
    "bellman_ford",
    "block_graph",
    "build_exit_head",
    "enumerate_placements",
    "exhaustive",
    "export_eenn",
    "load_heads",
    "plan_with_exits",
    "save_result",
    "search_thresholds",
]
