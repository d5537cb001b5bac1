"""The ``partition`` section of an experiment: the compressor at each cut and how learned ones are trained."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from jmsnas.validation import Strict


class CompressorConfig(Strict):
    kind: Literal["none", "quantize", "autoencoder", "distilled_bottleneck"] = "none"
    bits: Literal[2, 4, 8] = Field(8, description="bits per value on the wire (lossy kinds)")
    channel_fraction: float = Field(0.25, gt=0, le=1, description="learned kinds: share of the cut's channels "
                                    "the code keeps")


class PartitionConfig(Strict):
    """Partition of each chosen network and compressors at its cuts (``jmsnas.stages.deploy``)."""

    compressors: list[CompressorConfig] = Field(default_factory=list, description="one per cut, in chain order; "
                                                "cuts without one send float32")
    train_epochs: PositiveInt = Field(20, description="learned compressors: epochs of their first training step")
    finetune_epochs: int = Field(5, ge=0, description="learned compressors: epochs with the quantiser in place")
    payload_sweep: bool = Field(True, description="report: at each cut, the test accuracy with none / 8 / 4 / 2-bit "
                                "quantize instead of the deployed compressor (payload vs accuracy plot)")
