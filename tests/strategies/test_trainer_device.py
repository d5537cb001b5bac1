"""The experiment's ``trainer`` section (accelerator / devices / precision) reaches every Lightning Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from jmsnas.config import TrainerConfig, load_experiment
from jmsnas.errors import ConfigError
from jmsnas.strategies.children import ChildData, fit
from jmsnas.strategies.run import run_proxyless


@pytest.fixture
def trainers(monkeypatch) -> list[pl.Trainer]:
    """Every Trainer the code under test builds (``pl.Trainer`` is looked up at each call)."""
    made: list[pl.Trainer] = []

    class Recording(pl.Trainer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pl, "Trainer", Recording)
    return made


def test_search_and_retraining_train_on_the_configured_precision(tiny_experiment, write_experiment, tmp_path: Path,
                                                                 trainers) -> None:
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["strategy"].update(epochs=1, warmup_epochs=0, retrain={"epochs": 1})
    tiny_experiment["trainer"] = {"accelerator": "cpu", "devices": 1, "precision": 64}  # YAML int, like `32`
    exp = load_experiment(write_experiment(tiny_experiment))
    assert exp.config.trainer == TrainerConfig(accelerator="cpu", devices=1, precision="64")
    run_proxyless(exp, exp.config.strategy, 0, tmp_path / "run", progress=False)
    assert len(trainers) == 2  # search, retrain
    for t in trainers:
        assert t.precision == "64-true" and type(t.accelerator).__name__ == "CPUAccelerator" and t.num_devices == 1
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)  # the weights trained in float64
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float64}


def test_children_train_on_the_configured_precision(trainers) -> None:
    x, y = torch.randn(32, 1, 8), torch.randint(0, 3, (32,))
    data = ChildData(train=TensorDataset(x, y), val=TensorDataset(x, y), batch_size=16, epochs=1, lr=0.05,
                     weight_decay=0.0, temperature=1.0, kd_weight=0.0, use_kd=False, hw=TrainerConfig(precision="64"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    fit(model, data, seed=0)
    assert [t.precision for t in trainers] == ["64-true"] and model[1].weight.dtype == torch.float64


def test_default_is_cpu_one_device_float32(tiny_experiment, write_experiment) -> None:
    exp = load_experiment(write_experiment(tiny_experiment))
    assert exp.config.trainer.kwargs() == {"accelerator": "cpu", "devices": 1, "precision": "32"}


@pytest.mark.parametrize("trainer, gpu, field", [
    ({"accelerator": "cpu"}, 1, "trainer.accelerator"),  # a reserved GPU no training uses
    ({"accelerator": "gpu"}, 0, "tune.resources_per_trial.gpu"),  # a Ray trial would see no GPU
    ({"accelerator": "gpu", "devices": 2}, 1, "trainer.devices"),
    ({"precision": "8"}, 0, "trainer.precision"),
    ({"acelerator": "gpu"}, 0, "trainer.acelerator"),
])
def test_gpu_settings_must_agree(trainer, gpu, field, tiny_experiment, write_experiment) -> None:
    tiny_experiment["trainer"] = trainer
    tiny_experiment["tune"] = {"resources_per_trial": {"cpu": 1, "gpu": gpu}}
    with pytest.raises(ConfigError) as exc:
        load_experiment(write_experiment(tiny_experiment))
    assert exc.value.field == field


def test_tensorboard_logger_and_hyper_parameters(tiny_experiment, write_experiment, tmp_path: Path) -> None:
    import yaml

    from jmsnas.trainer_config import tensorboard_available

    if not tensorboard_available():
        pytest.skip("neither tensorboard nor tensorboardX is installed")
    tiny_experiment["dataset"]["num_samples"] = 300
    tiny_experiment["strategy"].update(epochs=1, warmup_epochs=0, retrain={"epochs": 1})
    tiny_experiment["trainer"] = {"logger": "tensorboard"}
    exp = load_experiment(write_experiment(tiny_experiment))
    run_proxyless(exp, exp.config.strategy, 0, tmp_path / "run", progress=False)
    for stage in ("search", "retrain"):
        assert (tmp_path / "run" / stage / "metrics.csv").is_file()  # CSV is always written
        assert list((tmp_path / "run" / stage / "tensorboard").glob("events.out.tfevents.*")), stage
    search = yaml.safe_load((tmp_path / "run" / "search" / "hparams.yaml").read_text())
    assert search["seed"] == 0 and search["strategy"]["epochs"] == 1 and search["strategy"]["t_const_ms"] == 5.0
    assert search["trainer"] == {"accelerator": "cpu", "devices": 1, "precision": "32", "logger": "tensorboard"}
    retrain = yaml.safe_load((tmp_path / "run" / "retrain" / "hparams.yaml").read_text())
    assert retrain["retrain"]["epochs"] == 1 and retrain["strategy"] == "proxyless"
