"""The supernet search: latency alone drives it to the fastest ops; checkpoints hold what a resume needs."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from jmsnas.latency.model import AnalyticLatencyModel
from jmsnas.space.spec import load_search_space
from jmsnas.space.supernet import Supernet
from jmsnas.strategies.expected_latency import ExpectedLatency, LatencyPenalty
from jmsnas.strategies.proxyless import SupernetSearch
from jmsnas.topology import AnalyticSpec, Device, build_topology

REPO = Path(__file__).resolve().parents[2]
SPACE = load_search_space(REPO / "search_spaces" / "tiny_1d.yaml")


def _loader(n: int = 64) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    return DataLoader(data, batch_size=16, shuffle=False)


def _system(**kwargs) -> tuple[SupernetSearch, ExpectedLatency]:
    device = Device("mcu", analytic=AnalyticSpec(macs_per_s=1e6, memory_bytes=10**9, overhead_ms=0.01))
    topology = build_topology("chain", [device], [])
    predictor = ExpectedLatency(SPACE, topology, {"mcu": AnalyticLatencyModel("mcu", device.analytic)}, 10)
    torch.manual_seed(0)
    net = Supernet(SPACE, 10)
    return SupernetSearch(net, predictor, kwargs.pop("penalty"), seed=0, arch_batches=_loader(), **kwargs), predictor


def _trainer(tmp_path: Path, epochs: int) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def test_latency_term_alone_converges_to_fastest_ops(tmp_path: Path) -> None:
    penalty = LatencyPenalty(lambda2=1.0, t_const_ms=0.0)
    system, predictor = _system(penalty=penalty, warmup_epochs=0, epochs=8, arch_lr=0.1, arch_ce_weight=0.0)
    start = float(predictor(system.supernet.probs()).total_ms.detach())
    _trainer(tmp_path, 8).fit(system, train_dataloaders=_loader(), val_dataloaders=_loader())
    fastest = [slot.candidates[int(table[:, 0].argmin())] for slot, table in zip(SPACE.layers(), predictor.tables,
                                                                                    strict=True)]
    assert system.supernet.derive() == fastest
    for p in system.supernet.probs():  # far from the uniform start
        assert float(p.max()) > 2.5 / len(p)
    assert float(predictor(system.supernet.probs()).total_ms.detach()) < start
    assert system.arch_steps == system.weight_steps == 8 * 4


def test_warmup_leaves_alpha_alone_and_checkpoint_resumes(tmp_path: Path) -> None:
    penalty = LatencyPenalty(lambda2=1e-3, t_const_ms=1.0)
    system, _ = _system(penalty=penalty, warmup_epochs=1, epochs=2)
    trainer = _trainer(tmp_path, 1)
    trainer.fit(system, train_dataloaders=_loader(), val_dataloaders=_loader())
    assert all(torch.count_nonzero(a) == 0 for a in system.supernet.arch_parameters())  # warm-up: weights only
    assert (system.weight_steps, system.arch_steps) == (4, 0)
    ckpt_path = tmp_path / "ckpt.ckpt"
    trainer.save_checkpoint(ckpt_path)
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 1
    assert ckpt["jmsnas"]["weight_steps"] == 4

    resumed, _ = _system(penalty=penalty, warmup_epochs=1, epochs=2)
    _trainer(tmp_path, 2).fit(resumed, train_dataloaders=_loader(), val_dataloaders=_loader(), ckpt_path=ckpt_path)
    assert (resumed.weight_steps, resumed.arch_steps) == (8, 4)  # counters continue; epoch 2 has arch steps
    assert any(torch.count_nonzero(a) > 0 for a in resumed.supernet.arch_parameters())
