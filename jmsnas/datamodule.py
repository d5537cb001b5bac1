"""``JmsnasDataModule``: a dataset's splits (`jmsnas.data.DatasetSplits`) as a Lightning DataModule."""

from __future__ import annotations

import pytorch_lightning as pl

from jmsnas.data import DatasetSplits


class JmsnasDataModule(DatasetSplits, pl.LightningDataModule):
    """Train / validation / test splits of one dataset config, for ``Trainer.fit(datamodule=...)``.

    Args:
        cfg: a dataset section of the experiment (``config.DatasetConfig``).
        seed: the experiment seed; it fixes the validation split.
    """
