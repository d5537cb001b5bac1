"""The experiment's ``dataset`` section: one model per dataset kind, told apart by ``name``.

`jmsnas.config` composes it (and re-exports the models); `jmsnas.data` builds the splits from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from jmsnas.validation import Strict


class _DatasetBase(Strict):
    batch_size: PositiveInt = 128
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training data held out for validation")
    num_workers: int = Field(0, ge=0)


class Mnist1dDataset(_DatasetBase):
    """MNIST-1D generated offline (Greydanus 2020): 4000 train / 1000 test of length 40 by default."""

    name: Literal["mnist1d"]
    num_samples: PositiveInt = Field(5000, description="train + test; the published set has 5000")
    train_split: float = Field(0.8, gt=0, lt=1)
    # The generator's difficulty knobs (mnist1d.data.get_dataset_args); the defaults are the published set's.
    iid_noise_scale: float = Field(0.02, ge=0, description="independent Gaussian noise per sample point")
    corr_noise_scale: float = Field(0.25, ge=0, description="correlated (smoothed) background noise")
    max_translation: int = Field(48, ge=0, description="largest circular shift of the padded template")
    scale_coeff: float = Field(0.4, ge=0, description="random scaling of the template")
    shear_scale: float = Field(0.75, ge=0, description="random shear of the template")


class DigitsDataset(_DatasetBase):
    """scikit-learn's 8x8 digits (1797 images), optionally resized to ``image_size``."""

    name: Literal["digits"]
    test_fraction: float = Field(0.2, gt=0, lt=1)
    image_size: PositiveInt = 8


class CifarDataset(_DatasetBase):
    name: Literal["cifar10", "cifar100"]
    root: Path
    download: bool = False


class ImageFolderDataset(_DatasetBase):
    """A folder of class subfolders; ``root/train`` and ``root/test`` when both exist, else one folder split by seed."""

    name: Literal["imagefolder"]
    root: Path
    image_size: PositiveInt = 32
    test_fraction: float = Field(0.2, gt=0, lt=1)


class SyntheticDataset(_DatasetBase):
    """Random tensors of a given shape with random labels: for throughput work, not accuracy."""

    name: Literal["synthetic"]
    shape: list[PositiveInt] = Field(min_length=2, max_length=3)
    num_classes: int = Field(10, ge=2)
    num_samples: PositiveInt = 512
    test_samples: PositiveInt = 128


DatasetConfig = Annotated[
    Mnist1dDataset | DigitsDataset | CifarDataset | ImageFolderDataset | SyntheticDataset,
    Field(discriminator="name"),
]
