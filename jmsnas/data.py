"""Datasets: mnist1d, digits, cifar10/100, imagefolder, synthetic; their splits, loaders and Lightning DataModule.

Every dataset has a train, a validation and a test split. The validation split is carved from
the training data by a permutation seeded with the experiment's seed, so two loads with one seed
give identical splits. The search (architecture steps, calibration) only sees train and
validation; the test split is for the final evaluation.

Nothing is downloaded unless the user sets ``download: true`` (CIFAR only). MNIST-1D is generated
offline with ``mnist1d.data.make_dataset`` (never ``get_dataset``, which goes to the network and
writes a pickle into the working folder).

`DatasetSplits` needs only torch; ``JmsnasDataModule`` (the same with Lightning's DataModule base, for
``Trainer.fit(datamodule=...)``) lives in `jmsnas.datamodule` and is imported from here on first use,
so that ``jmsnas search --check`` does not import Lightning.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from jmsnas.dataset_info import CIFAR_FOLDERS, DatasetInfo, check_dataset, held_out_count
from jmsnas.errors import DatasetError

# Per-channel statistics of the CIFAR training sets, the usual normalisation.
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into (rest, held-out fraction)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_held = held_out_count(n, fraction)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _mnist1d(cfg) -> tuple[Dataset, Dataset, int]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key in ("num_samples", "train_split", "iid_noise_scale", "corr_noise_scale", "max_translation", "scale_coeff",
                "shear_scale"):
        setattr(args, key, getattr(cfg, key))
    state = np.random.get_state()  # make_dataset reseeds numpy's global generator; leave it as found
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)

    def as_tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.as_tensor(x, dtype=torch.float32).unsqueeze(1), torch.as_tensor(y).long())

    return as_tensors(data["x"], data["y"]), as_tensors(data["x_test"], data["y_test"]), 10


def _digits(cfg) -> tuple[Dataset, Dataset, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if cfg.image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                                            align_corners=False)
    y = torch.as_tensor(digits.target).long()
    # The test split is fixed (seed 0), independent of the experiment seed, so results compare across seeds.
    train_idx, test_idx = _split_indices(len(y), cfg.test_fraction, 0)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]), 10


def _cifar(cfg) -> tuple[Dataset, Dataset, int]:
    from torchvision import datasets, transforms

    mean, std = _CIFAR_STATS[cfg.name]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(str(cfg.root), train=True, transform=tf, download=cfg.download)
        test = cls(str(cfg.root), train=False, transform=tf, download=cfg.download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(f"could not read {cfg.name} from {cfg.root}: {exc}", field="dataset.root") from None
    return train, test, 100 if cfg.name == "cifar100" else 10


def _imagefolder(cfg) -> tuple[Dataset, Dataset, int]:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((cfg.image_size, cfg.image_size)), transforms.ToTensor()])
    if (cfg.root / "train").is_dir() and (cfg.root / "test").is_dir():
        train = datasets.ImageFolder(str(cfg.root / "train"), transform=tf)
        test = datasets.ImageFolder(str(cfg.root / "test"), transform=tf)
        if train.classes != test.classes:
            raise DatasetError(f"train classes {train.classes} differ from test classes {test.classes}",
                               field="dataset.root")
        return train, test, len(train.classes)
    full = datasets.ImageFolder(str(cfg.root), transform=tf)
    train_idx, test_idx = _split_indices(len(full), cfg.test_fraction, 0)
    return Subset(full, train_idx.tolist()), Subset(full, test_idx.tolist()), len(full.classes)


def _synthetic(cfg, seed: int) -> tuple[Dataset, Dataset, int]:
    gen = torch.Generator().manual_seed(seed)

    def make(n: int) -> TensorDataset:
        x = torch.randn(n, *cfg.shape, generator=gen)
        return TensorDataset(x, torch.randint(0, cfg.num_classes, (n,), generator=gen))

    return make(cfg.num_samples), make(cfg.test_samples), cfg.num_classes


class DatasetSplits:
    """Train / validation / test splits of one dataset config, and their loaders.

    Args:
        cfg: a dataset section of the experiment (``config.DatasetConfig``).
        seed: the experiment seed; it fixes the validation split.
    """

    def __init__(self, cfg, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.num_classes = 0

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        check_dataset(self.cfg)
        name = self.cfg.name
        if name == "mnist1d":
            full_train, test, classes = _mnist1d(self.cfg)
        elif name == "digits":
            full_train, test, classes = _digits(self.cfg)
        elif name in CIFAR_FOLDERS:
            full_train, test, classes = _cifar(self.cfg)
        elif name == "imagefolder":
            full_train, test, classes = _imagefolder(self.cfg)
        else:
            full_train, test, classes = _synthetic(self.cfg, self.seed)
        train_idx, val_idx = _split_indices(len(full_train), self.cfg.val_fraction, self.seed)
        self.train_set = Subset(full_train, train_idx.tolist())
        self.val_set = Subset(full_train, val_idx.tolist())
        self.test_set = test
        self.num_classes = classes

    def info(self) -> DatasetInfo:
        self.setup()
        x, _ = self.train_set[0]
        return DatasetInfo(self.cfg.name, tuple(x.shape), self.num_classes, len(self.train_set),
                           len(self.val_set), len(self.test_set))

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        self.setup()
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=shuffle, generator=gen,
                          num_workers=self.cfg.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


def __getattr__(name: str):
    if name == "JmsnasDataModule":  # Lightning is imported only when a DataModule is wanted
        from jmsnas.datamodule import JmsnasDataModule

        return JmsnasDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
