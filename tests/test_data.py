"""Datasets: shapes, class counts, split sizes, seeded splits, and errors for bad roots."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from jmsnas.config import CifarDataset, DigitsDataset, ImageFolderDataset, Mnist1dDataset, SyntheticDataset
from jmsnas.data import DatasetSplits, JmsnasDataModule
from jmsnas.dataset_info import describe
from jmsnas.errors import DatasetError


def _val_tensor(dm: JmsnasDataModule) -> torch.Tensor:
    return torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])


def test_mnist1d_shapes_and_sizes() -> None:
    dm = JmsnasDataModule(Mnist1dDataset(name="mnist1d", num_samples=500), seed=0)
    info = dm.info()
    # 500 samples, 80 % train -> 400, of which 10 % validation -> 40; 100 test
    assert (info.input_shape, info.num_classes) == ((1, 40), 10)
    assert (info.train_size, info.val_size, info.test_size) == (360, 40, 100)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(torch.cat([b[1] for b in dm.test_dataloader()]).tolist()) == set(range(10))


def test_mnist1d_leaves_numpy_global_state_alone() -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    JmsnasDataModule(Mnist1dDataset(name="mnist1d", num_samples=100), seed=0).setup()
    assert np.random.rand() == expected


def test_mnist1d_knobs_default_to_the_published_generator_and_change_the_data() -> None:
    from mnist1d.data import get_dataset_args

    published = get_dataset_args()
    cfg = Mnist1dDataset(name="mnist1d", num_samples=200)
    for key in ("iid_noise_scale", "corr_noise_scale", "max_translation", "scale_coeff", "shear_scale"):
        assert getattr(cfg, key) == getattr(published, key)
    plain = JmsnasDataModule(cfg, seed=0)
    noisy = JmsnasDataModule(Mnist1dDataset(name="mnist1d", num_samples=200, iid_noise_scale=0.5), seed=0)
    plain.setup()
    noisy.setup()
    rough = [float(_val_tensor(dm).diff(dim=-1).std()) for dm in (plain, noisy)]
    assert rough[1] > 1.5 * rough[0]  # independent noise per point: far larger point-to-point steps
    assert [int(y) for _, y in noisy.val_set] == [int(y) for _, y in plain.val_set]  # same draws, same labels


def test_same_seed_same_split_other_seed_other_split() -> None:
    cfg = DigitsDataset(name="digits")
    a, b, c = (JmsnasDataModule(cfg, seed=s) for s in (7, 7, 8))
    for dm in (a, b, c):
        dm.setup()
    assert a.val_set.indices == b.val_set.indices
    assert torch.equal(_val_tensor(a), _val_tensor(b))
    assert a.val_set.indices != c.val_set.indices
    assert not set(a.val_set.indices) & set(a.train_set.indices)  # validation is carved out, not copied


def test_digits_sizes_and_resize() -> None:
    info = JmsnasDataModule(DigitsDataset(name="digits"), seed=0).info()
    # 1797 images: 359 test (20 %), 1438 train of which 144 validation (10 %)
    assert (info.input_shape, info.num_classes) == ((1, 8, 8), 10)
    assert (info.train_size, info.val_size, info.test_size) == (1294, 144, 359)
    info32 = JmsnasDataModule(DigitsDataset(name="digits", image_size=32), seed=0).info()
    assert info32.input_shape == (1, 32, 32)


def test_synthetic_shape() -> None:
    info = JmsnasDataModule(SyntheticDataset(name="synthetic", shape=[3, 16, 16], num_classes=5,
                                             num_samples=100, test_samples=20), seed=0).info()
    assert info.input_shape == (3, 16, 16) and info.num_classes == 5
    assert (info.train_size, info.val_size, info.test_size) == (90, 10, 20)


def test_imagefolder_split_by_seed(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog", "eel"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(np.full((12, 10, 3), i * 20, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    info = JmsnasDataModule(ImageFolderDataset(name="imagefolder", root=tmp_path, image_size=8), seed=0).info()
    # 30 images: 6 test, 24 train of which 2 (round(2.4)) validation
    assert (info.input_shape, info.num_classes) == ((3, 8, 8), 3)
    assert (info.train_size, info.val_size, info.test_size) == (22, 2, 6)


def test_imagefolder_without_classes(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(DatasetError, match="one subfolder per class"):
        JmsnasDataModule(ImageFolderDataset(name="imagefolder", root=tmp_path), seed=0).setup()
    with pytest.raises(DatasetError, match="is not a folder"):
        JmsnasDataModule(ImageFolderDataset(name="imagefolder", root=tmp_path / "nope"), seed=0).setup()


def test_cifar_reads_local_archive_layout(tmp_path: Path, monkeypatch) -> None:
    """A tiny CIFAR-10 in the official python layout (the test writes it) loads with the right splits."""
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(range(10)) * (n // 10)}

    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps(batch(10)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(20)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # torchvision checks the md5 sums of the real archive's files
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    info = JmsnasDataModule(CifarDataset(name="cifar10", root=tmp_path), seed=0).info()
    assert (info.input_shape, info.num_classes) == ((3, 32, 32), 10)
    assert (info.train_size, info.val_size, info.test_size) == (45, 5, 20)


def test_cifar_missing_root_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-100-python"):
        JmsnasDataModule(CifarDataset(name="cifar100", root=tmp_path), seed=0).setup()


@pytest.mark.parametrize("cfg", [
    Mnist1dDataset(name="mnist1d"),
    Mnist1dDataset(name="mnist1d", num_samples=1234, train_split=0.3, val_fraction=0.2),
    DigitsDataset(name="digits", test_fraction=0.33, image_size=12, val_fraction=0.15),
    SyntheticDataset(name="synthetic", shape=[3, 9, 7], num_classes=4, num_samples=77, test_samples=13),
], ids=["mnist1d", "mnist1d-knobs", "digits", "synthetic"])
def test_describe_without_loading_matches_the_loaded_splits(cfg) -> None:
    """``--check``'s summary (no torch) says what loading the dataset gives."""
    assert describe(cfg) == DatasetSplits(cfg, seed=3).info()


def test_describe_leaves_what_depends_on_files_to_loading(tmp_path: Path) -> None:
    assert describe(ImageFolderDataset(name="imagefolder", root=tmp_path)) is None
    assert describe(CifarDataset(name="cifar10", root=tmp_path)) is None
