"""A dataset's shape and split sizes from its config, and its files checked, without loading it.

``jmsnas search --check`` prints them; loading MNIST-1D means generating it (scipy, matplotlib)
and holding it as torch tensors, which alone took longer than the whole check may. Here the
sizes follow from the same arithmetic as the loaders in `jmsnas.data` (which use
`held_out_count` too), so the two cannot drift apart without ``tests/test_data.py`` noticing.
A dataset whose sizes depend on its files (``imagefolder``, and CIFAR, whose local copy is what
counts) is not described here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jmsnas.errors import DatasetError

#: scikit-learn's digits: 1797 images of 8x8.
DIGITS_SAMPLES = 1797
#: MNIST-1D's sequences are this long (``mnist1d.data.get_dataset_args().final_seq_length``).
MNIST1D_LENGTH = 40
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like once its splits are made."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    val_size: int
    test_size: int


def held_out_count(n: int, fraction: float) -> int:
    """How many of ``n`` samples a split of ``fraction`` holds out (at least one)."""
    return max(1, int(round(n * fraction)))


def describe(cfg) -> DatasetInfo | None:
    """The dataset's info from its config alone, or None when only loading it can tell (CIFAR, ``imagefolder``)."""
    if cfg.name == "mnist1d":
        total = (cfg.num_samples // 10) * 10  # make_dataset draws num_samples // 10 per class
        full_train = int(total * cfg.train_split)
        shape, classes, test = (1, MNIST1D_LENGTH), 10, total - full_train
    elif cfg.name == "digits":
        test = held_out_count(DIGITS_SAMPLES, cfg.test_fraction)
        full_train = DIGITS_SAMPLES - test
        shape, classes = (1, cfg.image_size, cfg.image_size), 10
    elif cfg.name == "synthetic":
        full_train, test, classes, shape = cfg.num_samples, cfg.test_samples, cfg.num_classes, tuple(cfg.shape)
    else:
        return None
    val = held_out_count(full_train, cfg.val_fraction)
    return DatasetInfo(cfg.name, tuple(shape), classes, full_train - val, val, test)


def check_dataset(cfg, file: str | Path | None = None) -> None:
    """Cheap checks that a dataset's files are where the config says (no loading).

    Raises:
        DatasetError: naming ``dataset.root`` and what was expected there.
    """
    root: Path | None = getattr(cfg, "root", None)
    if root is None:
        return
    if cfg.name in CIFAR_FOLDERS:
        folder = root / CIFAR_FOLDERS[cfg.name]
        if not cfg.download and not folder.is_dir():
            raise DatasetError(f"expected the python version of {cfg.name} at {folder} (the folder "
                               f"'{CIFAR_FOLDERS[cfg.name]}' from the official archive); put it there or set "
                               "'download: true'", file=file, field="dataset.root")
        return
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; expected a folder of class subfolders holding images",
                           file=file, field="dataset.root")
    for top in ([root / "train", root / "test"] if (root / "train").is_dir() else [root]):
        classes = [d for d in top.iterdir() if d.is_dir()] if top.is_dir() else []
        with_images = [d for d in classes if any(p.suffix.lower() in _IMAGE_SUFFIXES for p in d.iterdir())]
        if len(with_images) < 2:
            raise DatasetError(f"{top} should hold one subfolder per class (at least two) with image files "
                               f"({', '.join(sorted(_IMAGE_SUFFIXES))}); found {len(with_images)}",
                               file=file, field="dataset.root")
