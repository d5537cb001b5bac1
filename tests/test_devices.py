"""Device handling (issue 19): ``trainer.accelerator`` -> a torch device, the hand-written loops run there.

Three properties, each checked without a GPU:

- ``torch_device`` maps every accelerator (CUDA / MPS availability patched both ways);
- every loop gives bit-identical results with ``device="cpu"`` and ``device=None`` (the plumbing changes no
  number);
- every loop really hands its modules to the device and feeds them batches moved there: a spy on the
  ``on_device`` / ``to_device`` each loop calls marks the moved batches (a tensor subclass that survives
  every operation) and checks each forward inside the block saw marked inputs only, so a loop that
  ignored ``device``, or forgot to move one batch, fails;

and the deploy stage passes the experiment's device to the exits and the learned compressors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from exits_specs import digits_dm, mnist1d_dm, tiny_1d_spec, trained_tiny_1d, trained_tiny_resnet
from torch import nn

import jmsnas.compress.autoencoder as autoencoder_mod
import jmsnas.compress.distilled as distilled_mod
import jmsnas.exits.adaptive as adaptive_mod
import jmsnas.exits.decision as decision_mod
import jmsnas.exits.predictor as predictor_mod
import jmsnas.exits.train as train_mod
from jmsnas import devices
from jmsnas.compress.autoencoder import fit_autoencoder, make_autoencoder
from jmsnas.compress.distilled import fit_student_head, make_student_head
from jmsnas.config import load_experiment
from jmsnas.devices import on_device, to_device, torch_device
from jmsnas.errors import ConfigError
from jmsnas.exits.adaptive import AdaptiveThresholds, OperatingPoint, fit_regressor
from jmsnas.exits.decision import fit_decision_unit
from jmsnas.exits.graph import block_graph
from jmsnas.exits.heads import build_exit_head
from jmsnas.exits.predictor import ExitPredictor, PredictorTraining, predictor_scores, train_predictor
from jmsnas.exits.train import exit_outputs, joint_finetune, train_heads
from jmsnas.export.split import split_archnet
from jmsnas.space.arch import build_model
from jmsnas.trainer_config import TrainerConfig


def _availability(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(devices, "_mps_available", lambda: mps)


# --- torch_device ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("accelerator", "cuda", "mps", "expected"), [
    ("cpu", True, True, "cpu"), ("auto", False, False, "cpu"), ("auto", True, True, "cuda"),
    ("auto", False, True, "mps"), ("gpu", True, False, "cuda"), ("cuda", True, False, "cuda"),
    ("mps", False, True, "mps")])
def test_accelerator_maps_to_a_torch_device(monkeypatch, accelerator: str, cuda: bool, mps: bool,
                                            expected: str) -> None:
    _availability(monkeypatch, cuda, mps)
    assert torch_device(TrainerConfig(accelerator=accelerator)) == torch.device(expected)


def test_auto_on_this_machine_is_what_torch_sees() -> None:
    mps = devices._mps_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert torch_device(TrainerConfig(accelerator="auto")) == torch.device(expected)
    assert torch_device(TrainerConfig()) == torch.device("cpu")  # the default trains where it always did


@pytest.mark.parametrize(("accelerator", "needs"), [("gpu", "CUDA"), ("cuda", "CUDA"), ("mps", "MPS")])
def test_an_accelerator_this_machine_lacks_is_a_clear_config_error(monkeypatch, accelerator: str, needs: str) -> None:
    _availability(monkeypatch, False, False)
    with pytest.raises(ConfigError, match=f"needs {needs}") as info:
        torch_device(TrainerConfig(accelerator=accelerator))
    assert info.value.field == "trainer.accelerator"
    assert str(info.value).startswith("trainer.accelerator: ")
    assert "valid on this machine: cpu, auto" in info.value.message and "cuda" not in info.value.message.split(":")[-1]


def test_the_valid_list_names_what_this_machine_has(monkeypatch) -> None:
    _availability(monkeypatch, True, False)
    with pytest.raises(ConfigError, match="valid on this machine: cpu, auto, gpu, cuda$"):
        torch_device(TrainerConfig(accelerator="mps"))


# --- on_device / to_device --------------------------------------------------------------------------------------------

class _RecordsMoves(nn.Linear):
    """A module that records where it is sent and stays on the CPU (so any device name can be tried)."""

    def __init__(self) -> None:
        super().__init__(2, 2)
        self.moves: list[torch.device] = []

    def to(self, device, *args, **kwargs):  # type: ignore[override]
        self.moves.append(torch.device(device))
        return self


def test_on_device_moves_there_and_back_even_on_an_exception() -> None:
    m = _RecordsMoves()
    with on_device("meta", m) as dev:
        assert dev == torch.device("meta") and m.moves == [torch.device("meta")]
    assert m.moves == [torch.device("meta"), torch.device("cpu")]  # back where it was
    m.moves.clear()
    with pytest.raises(RuntimeError, match="boom"), on_device("meta", m):
        raise RuntimeError("boom")
    assert m.moves == [torch.device("meta"), torch.device("cpu")]


def test_none_moves_nothing_and_cpu_keeps_the_very_tensors() -> None:
    m = _RecordsMoves()
    with on_device(None, m) as dev:
        assert dev is None
    assert m.moves == []
    lin = nn.Linear(3, 2)
    before = [p.data_ptr() for p in lin.parameters()]
    with on_device("cpu", lin):
        assert [p.data_ptr() for p in lin.parameters()] == before
    x, y = torch.randn(2, 3), torch.arange(2)
    assert to_device(x, None) is x and to_device(x, "cpu") is x
    moved = to_device((x, [y, 3]), "cpu")
    assert isinstance(moved, tuple) and moved[0] is x and moved[1][0] is y and moved[1][1] == 3


# --- the spy: what each loop moves ----------------------------------------------------------------------------------

class _Moved(torch.Tensor):
    """A tensor that went through ``to_device`` to the requested device; operations on it keep the class."""


def _mark(value):
    if isinstance(value, torch.Tensor):
        return value.as_subclass(_Moved)
    if isinstance(value, tuple | list):
        return type(value)(_mark(v) for v in value)
    return value


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    return []


class _Spy:
    """Replaces ``on_device`` / ``to_device`` in the loops' modules; records modules, devices and forwards."""

    def __init__(self, monkeypatch, namespaces, target: str) -> None:
        self.target = torch.device(target)
        self.devices: list[torch.device | None] = []
        self.modules: list[nn.Module] = []
        self.forwards: list[tuple[str, bool]] = []
        for ns in namespaces:
            monkeypatch.setattr(ns, "on_device", self.on_device)
            monkeypatch.setattr(ns, "to_device", self.to_device)

    @contextmanager
    def on_device(self, device, *modules: nn.Module) -> Iterator[torch.device | None]:
        self.devices.append(devices.as_device(device))
        self.modules += modules
        seen = {id(s): s for m in modules for s in m.modules()}
        hooks = [s.register_forward_pre_hook(self._hook) for s in seen.values()]
        try:
            with devices.on_device(device, *modules) as dev:
                yield dev
        finally:
            for h in hooks:
                h.remove()

    def _hook(self, module: nn.Module, args) -> None:
        inputs = _tensors(args)
        if inputs:
            self.forwards.append((type(module).__name__, all(isinstance(t, _Moved) for t in inputs)))

    def to_device(self, value, device):
        out = devices.to_device(value, device)
        return _mark(out) if device is not None and torch.device(device) == self.target else out

    def check(self, *expected: nn.Module) -> None:
        """Every block ran on the target, ``expected`` modules were handed to it, every forward saw moved inputs."""
        assert self.devices and all(d == self.target for d in self.devices)
        assert all(any(m is e for m in self.modules) for e in expected)
        assert self.forwards and [f for f in self.forwards if not f[1]] == []


# --- the loops --------------------------------------------------------------------------------------------------------

def _flat(value) -> list:
    """Numbers and tensors of a result, in order, for an exact comparison."""
    if isinstance(value, nn.Module):
        return [v.detach().clone() for v in value.state_dict().values()]
    if isinstance(value, dict):
        return [x for k in sorted(value, key=str) for x in [k, *_flat(value[k])]]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _flat(v)]
    if isinstance(value, np.ndarray):
        return [torch.from_numpy(np.array(value))]
    return [value]


def _same(a, b) -> bool:
    fa, fb = _flat(a), _flat(b)
    return len(fa) == len(fb) and all(torch.equal(torch.as_tensor(x).as_subclass(torch.Tensor),
                                                  torch.as_tensor(y).as_subclass(torch.Tensor))
                                      if isinstance(x, torch.Tensor) else x == y for x, y in zip(fa, fb, strict=True))


def _heads_graph(seed: int = 0):
    g = block_graph(trained_tiny_1d(), (1, 40))
    torch.manual_seed(seed)
    return g, {b: build_exit_head(g.feature_shapes[b], g.blueprint, 0.05 * g.total_macs) for b in g.locations}


def _train_heads(cache: bool) -> Callable:
    def run(device, spy_modules: list):
        g, heads = _heads_graph()
        spy_modules += [g.model, *heads.values()]
        dm = mnist1d_dm()
        r = train_heads(g, heads, dm.train_set, dm.val_set, epochs=2, lr=0.01, batch_size=64, cache_bytes=0,
                        min_accuracy_gain=0.0, seed=0, cache=cache, device=device)
        return [r.heads, r.accuracy, r.history, r.dropped]
    return run


def _exit_outputs(device, spy_modules: list):
    g, heads = _heads_graph()
    spy_modules += [g.model, *heads.values()]
    outs = exit_outputs(g, heads, mnist1d_dm().val_set, 64, device)
    assert outs.final.device.type == "cpu" and all(z.device.type == "cpu" for z in outs.heads.values())
    return [outs.heads, outs.final, outs.labels]


def _joint_finetune(device, spy_modules: list):
    g = block_graph(trained_tiny_resnet(), (1, 8, 8))
    torch.manual_seed(0)
    heads = [build_exit_head(g.feature_shapes[b], g.blueprint, 0.05 * g.total_macs) for b in g.locations]
    tuned, tuned_heads, _ = joint_finetune(g, g.locations, heads, digits_dm().train_set, weights=[0.2, 0.3, 0.5],
                                           epochs=1, lr=0.01, batch_size=64, device=device)
    spy_modules += [tuned.model]
    return [tuned.model, tuned_heads]


def _decision_unit(device, spy_modules: list):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=200)
    correct = rng.random(200) < probs.max(axis=1) * 2
    du = fit_decision_unit(probs, correct, model="mlp", hidden=(8, 4), epochs=30, seed=0, device=device)
    return [du.mean, du.scale, [list(la) for la in du.layers]]


def _regressor(device, spy_modules: list):
    reg = fit_regressor([1.0, 10.0, 100.0], np.array([[0.2, 0.9], [0.5, 0.5], [0.9, 0.1]]), steps=50, seed=0,
                        device=device)
    return [reg["centre"], reg["scale"], {k: torch.tensor(v) for k, v in reg["state"].items()}]


def _predictor_data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(48, 1, 40, generator=gen), (torch.rand(48, 2, generator=gen) > 0.5).float()


def _predictor(device, spy_modules: list):
    x, labels = _predictor_data()
    torch.manual_seed(0)
    ep = ExitPredictor((1, 40), 2, "ours", width=0.5)
    spy_modules.append(ep)
    train_predictor(ep, x, labels, PredictorTraining(epochs=2, batch_size=16), device=device)
    return [ep]


def _predictor_scores(device, spy_modules: list):
    x, _ = _predictor_data()
    torch.manual_seed(0)
    ep = ExitPredictor((1, 40), 2, "plain", width=0.5)
    spy_modules.append(ep)
    s = predictor_scores(ep, x, batch_size=16, device=device)
    assert s.device.type == "cpu"
    return [s, ep]


def _compress_data():
    torch.manual_seed(0)
    model = build_model(tiny_1d_spec()).eval()
    val = mnist1d_dm().val_set
    x = torch.stack([val[i][0] for i in range(96)])
    return model, split_archnet(model, [0, 1, 6]), list(x.split(32))


def _autoencoder(device, spy_modules: list):
    model, segments, inputs = _compress_data()
    torch.manual_seed(0)
    encoder, decoder = make_autoencoder((8, 40), reduction=4, nonnegative=True)
    spy_modules += [encoder, decoder, model]
    fit = fit_autoencoder(encoder, decoder, segments[:1], segments[1:], model, inputs, epochs=2, finetune_epochs=1,
                          device=device)
    assert all(p.device.type == "cpu" for m in (fit.encoder, fit.decoder, *fit.back) for p in m.state_dict().values())
    return [fit.encoder, fit.decoder, fit.back, fit.params, fit.history, fit.finetune_history]


def _distilled(device, spy_modules: list):
    model, segments, inputs = _compress_data()
    torch.manual_seed(0)
    encoder, decoder = make_student_head((1, 40), (8, 40), 0.25)
    spy_modules += [encoder, decoder, segments[0]]
    fit = fit_student_head(encoder, decoder, segments[:1], inputs, epochs=2, finetune_epochs=1, device=device)
    assert all(p.device.type == "cpu" for m in (fit.encoder, *fit.codec) for p in m.state_dict().values())
    return [fit.encoder, fit.codec, fit.params, fit.history, fit.finetune_history]


LOOPS = {
    "train_heads_cached": ([train_mod], _train_heads(True)),
    "train_heads_recomputed": ([train_mod], _train_heads(False)),
    "exit_outputs": ([train_mod], _exit_outputs),
    "joint_finetune": ([train_mod], _joint_finetune),
    "decision_unit": ([decision_mod], _decision_unit),
    "adaptive_regressor": ([adaptive_mod], _regressor),
    "exit_predictor": ([predictor_mod], _predictor),
    "predictor_scores": ([predictor_mod], _predictor_scores),
    "autoencoder": ([autoencoder_mod], _autoencoder),
    "distilled": ([distilled_mod], _distilled),
}


@pytest.mark.parametrize("name", list(LOOPS))
def test_cpu_device_gives_bit_identical_results(name: str) -> None:
    _, run = LOOPS[name]
    assert _same(run(None, []), run("cpu", []))


@pytest.mark.parametrize("name", list(LOOPS))
def test_each_loop_moves_its_modules_and_batches_to_the_device(monkeypatch, name: str) -> None:
    namespaces, run = LOOPS[name]
    spy = _Spy(monkeypatch, namespaces, "cpu")
    expected: list[nn.Module] = []
    run("cpu", expected)
    spy.check(*[m for m in expected if name != "joint_finetune"])  # joint_finetune moves copies it makes


def test_ignoring_the_device_is_caught_by_the_spy(monkeypatch) -> None:
    """The spy's own check fails when a loop runs with the device left out (what an ignored argument looks like)."""
    spy = _Spy(monkeypatch, [decision_mod], "cpu")
    _decision_unit(None, [])
    with pytest.raises(AssertionError):
        spy.check()


def test_adaptive_thresholds_pass_the_device_to_each_regressor(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(adaptive_mod, "fit_regressor", lambda *a, **k: seen.append(k["device"]) or {"state": {}})
    point = OperatingPoint([0.5], None, 0.9, 1.0, True)
    table = SimpleNamespace(best=lambda *a: point, mode="ee", stats=SimpleNamespace(num_exits=1))
    AdaptiveThresholds.fit(table, 100.0, 5.0, [[1.0, 2.0], [5.0, 9.0]], device="cpu")  # type: ignore[arg-type]
    assert seen == ["cpu", "cpu"]


# --- the deploy stage -------------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _gpu_choice(tiny_experiment: dict, write_experiment, tmp_path: Path, **sections):
    tiny_experiment.update(trainer={"accelerator": "gpu"}, tune={"resources_per_trial": {"gpu": 1}}, **sections)
    exp = load_experiment(write_experiment(tiny_experiment))
    choice = tmp_path / "choice"
    choice.mkdir()
    tiny_1d_spec().save_json(choice / "arch.json")
    torch.manual_seed(0)
    torch.save(build_model(tiny_1d_spec()).state_dict(), choice / "model.pt")
    return exp, choice


def _stop_at(monkeypatch, name: str, seen: list) -> None:
    def record(*args, **kwargs):
        seen.append(kwargs["device"] if "device" in kwargs else args[-1])
        raise _Stop

    import jmsnas.stages.deploy as deploy_mod

    monkeypatch.setattr(deploy_mod, name, record)


@pytest.mark.parametrize(("sections", "call"), [
    ({"exits": {"head_epochs": 1}}, "augment"),
    ({"partition": {"compressors": [{"kind": "none"}, {"kind": "autoencoder"}], "train_epochs": 1}}, "fit_learned")])
def test_deploy_stage_trains_on_the_trainer_device(tiny_experiment, write_experiment, tmp_path: Path, monkeypatch,
                                                   sections: dict, call: str) -> None:
    from jmsnas.stages.deploy import deploy_choice

    exp, choice = _gpu_choice(tiny_experiment, write_experiment, tmp_path, **sections)
    _availability(monkeypatch, True, False)  # as on a CUDA machine; the loop is stopped before it runs
    seen: list = []
    _stop_at(monkeypatch, call, seen)
    with pytest.raises(_Stop):
        deploy_choice(exp, choice)
    assert seen == [torch.device("cuda")]


def test_deploy_stage_without_the_gpu_it_asks_for_fails_before_any_work(tiny_experiment, write_experiment,
                                                                        tmp_path: Path, monkeypatch) -> None:
    from jmsnas.stages.deploy import deploy_choice

    exp, choice = _gpu_choice(tiny_experiment, write_experiment, tmp_path, exits={"head_epochs": 1})
    _availability(monkeypatch, False, False)
    seen: list = []
    _stop_at(monkeypatch, "augment", seen)
    with pytest.raises(ConfigError, match="needs CUDA") as info:
        deploy_choice(exp, choice)
    assert info.value.field == "trainer.accelerator" and seen == []


# --- on a real GPU ----------------------------------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda_only
def test_exit_heads_train_on_cuda_and_come_back_to_the_cpu() -> None:
    g, heads = _heads_graph()
    before = copy.deepcopy(g.model.state_dict())
    start = {b: copy.deepcopy(h.state_dict()) for b, h in heads.items()}
    dm = mnist1d_dm()
    cpu = train_heads(*_heads_graph(), dm.train_set, dm.val_set, epochs=2, lr=0.01, batch_size=64, cache_bytes=0,
                      min_accuracy_gain=0.0, seed=0)
    run = train_heads(g, heads, dm.train_set, dm.val_set, epochs=2, lr=0.01, batch_size=64, cache_bytes=0,
                      min_accuracy_gain=0.0, seed=0, device="cuda")
    assert all(p.device.type == "cpu" for h in heads.values() for p in h.state_dict().values())
    assert all(p.device.type == "cpu" for p in g.model.state_dict().values())
    assert all(torch.equal(v, before[k]) for k, v in g.model.state_dict().items())  # the backbone stays frozen
    assert any(not torch.equal(v, start[b][k]) for b, h in heads.items() for k, v in h.state_dict().items())
    for loc in g.locations:  # the same training, up to float differences between the two devices
        assert run.accuracy[loc] == pytest.approx(cpu.accuracy[loc], abs=0.05)
    outs = exit_outputs(g, run.heads, dm.val_set, 64, device="cuda")
    assert outs.final.device.type == "cpu" and all(z.device.type == "cpu" for z in outs.heads.values())


@cuda_only
def test_autoencoder_trains_on_cuda_and_exports_from_the_cpu() -> None:
    model, segments, inputs = _compress_data()
    encoder, decoder = make_autoencoder((8, 40), reduction=4, nonnegative=True)
    fit = fit_autoencoder(encoder, decoder, segments[:1], segments[1:], model, inputs, epochs=2, finetune_epochs=1,
                          device=torch.device("cuda"))
    assert all(p.device.type == "cpu" for m in (fit.encoder, fit.decoder, *fit.back, model)
               for p in m.state_dict().values())
    assert all(np.isfinite(fit.history + fit.finetune_history))
