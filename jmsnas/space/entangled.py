"""Weight entanglement: the MBConv candidates of one supernet layer share one set of weights.

With one module per candidate (``weight_sharing: separate``), the 6 or 12 MBConvs of a layer are
independent networks: each sees a sixth to a twelfth of the weight steps, and the layer after it
sees a different feature basis for every candidate. On the quickstart (MNIST-1D, 57 weight steps
per epoch) a supernet built that way did not learn: uniform single-path training reached 23 %
training accuracy after 6 epochs and 27 % after 20 (`jmsnas.strategies.proxyless` has the
numbers), while any one of its paths trained alone reaches 95 % in 4 epochs.

Here, as in Once-for-All's elastic kernel and width and AutoFormer's weight entanglement, a layer
holds one `SharedMBConv`: an ordinary `MBConv` with the largest kernel and expansion among the
layer's candidates. Candidate ``mb_k{K}_e{E}[_sc]`` uses the first ``in_channels * E`` hidden
channels of every weight and BatchNorm, and the centre K taps of every depthwise kernel (OFA's
kernel slicing without its transformation matrices); the ``_sc`` variant adds the input to the same
body. Every weight step trains the weights all candidates start from, so the same 20 epochs give
97 % validation accuracy on a random path (after `recalibrate_bn`). BatchNorm running statistics are
shared the same way, so they describe no single candidate: the derived network's are re-estimated before it is evaluated
(`jmsnas.space.supernet.recalibrate_bn`).

`EntangledCandidate` is one candidate's view of the shared module (a `MixedOp` candidate);
``export()`` copies its slices into a standalone `MBConv` that computes exactly what the view does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jmsnas.space.ops import CANDIDATES, Dims, MBConv, build_op


def _sliced_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, channels: int) -> torch.Tensor:
    """``bn`` on its first ``channels`` channels, as ``nn.BatchNorm`` would (running statistics updated in place)."""
    factor = 0.0
    if bn.training:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return F.batch_norm(x, bn.running_mean[:channels], bn.running_var[:channels], bn.weight[:channels],
                        bn.bias[:channels], bn.training, factor, bn.eps)


class SharedMBConv(nn.Module):
    """The weights every MBConv candidate of one layer is a slice of.

    Args:
        in_channels: input channels of the layer.
        out_channels: output channels of the layer.
        stride: the layer's stride.
        kernel_size: the largest depthwise kernel among the candidates.
        expansion: the largest expansion ratio among the candidates.
        dims: 1 for signals, 2 for images.

    Attributes:
        body: an `MBConv` (no shortcut) of the largest kernel and expansion; its names are timm's.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel_size: int, expansion: int,
                 dims: Dims) -> None:
        super().__init__()
        self.body = MBConv(in_channels, out_channels, kernel_size, expansion, stride, False, dims)
        self.in_channels, self.out_channels, self.stride, self.dims = in_channels, out_channels, stride, dims

    def _dw_weight(self, kernel_size: int, hidden: int) -> torch.Tensor:
        full = self.body.conv_dw.weight
        start = (full.shape[-1] - kernel_size) // 2
        taps = slice(start, start + kernel_size)
        return (full[:hidden, :, taps] if self.dims == 1 else full[:hidden, :, taps, taps]).contiguous()

    def forward(self, x: torch.Tensor, kernel_size: int, expansion: int, shortcut: bool) -> torch.Tensor:
        """Candidate ``(kernel_size, expansion, shortcut)`` on ``x``."""
        conv = F.conv1d if self.dims == 1 else F.conv2d
        b, hidden = self.body, self.in_channels * expansion
        y = F.relu6(_sliced_batch_norm(b.bn1, conv(x, b.conv_pw.weight[:hidden]), hidden))
        y = conv(y, self._dw_weight(kernel_size, hidden), stride=self.stride, padding=kernel_size // 2, groups=hidden)
        y = F.relu6(_sliced_batch_norm(b.bn2, y, hidden))
        y = _sliced_batch_norm(b.bn3, conv(y, b.conv_pwl.weight[:, :hidden].contiguous()), self.out_channels)
        return x + y if shortcut else y

    def slice_state(self, kernel_size: int, expansion: int) -> dict[str, torch.Tensor]:
        """The state dict of a standalone `MBConv` of this kernel and expansion: copies of the slices."""
        hidden = self.in_channels * expansion
        out = {"conv_pw.weight": self.body.conv_pw.weight[:hidden],
               "conv_dw.weight": self._dw_weight(kernel_size, hidden),
               "conv_pwl.weight": self.body.conv_pwl.weight[:, :hidden]}
        for name, channels in (("bn1", hidden), ("bn2", hidden), ("bn3", self.out_channels)):
            bn = getattr(self.body, name)
            out.update({f"{name}.{k}": getattr(bn, k)[:channels] for k in ("weight", "bias", "running_mean",
                                                                            "running_var")})
            out[f"{name}.num_batches_tracked"] = bn.num_batches_tracked
        return {k: v.detach().clone() for k, v in out.items()}


class EntangledCandidate(nn.Module):
    """One MBConv candidate of a layer, computed from the layer's `SharedMBConv`.

    The shared module is not a submodule here (the `MixedOp` owns it once), so parameters and the
    state dict list each shared weight once.

    Args:
        shared: the layer's shared weights.
        name: the candidate, ``mb_k{K}_e{E}[_sc]``.
    """

    def __init__(self, shared: SharedMBConv, name: str) -> None:
        super().__init__()
        op = CANDIDATES[name]
        if op.kind != "mbconv":
            raise ValueError(f"{name!r} is not an MBConv candidate")
        self._shared = [shared]  # a list: not registered as a submodule
        self.name = name
        self.kernel_size, self.expansion, self.shortcut = op.kernel_size, op.expansion, op.shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared[0](x, self.kernel_size, self.expansion, self.shortcut)

    def export(self) -> MBConv:
        """A standalone `MBConv` holding copies of this candidate's slices (same outputs, no shared storage)."""
        s = self._shared[0]
        net = MBConv(s.in_channels, s.out_channels, self.kernel_size, self.expansion, s.stride, self.shortcut, s.dims)
        net.load_state_dict(s.slice_state(self.kernel_size, self.expansion))
        ref = s.body.conv_pw.weight
        return net.to(device=ref.device, dtype=ref.dtype).train(self.training)


def entangled_candidates(names: list[str], in_channels: int, out_channels: int, stride: int,
                         dims: Dims) -> tuple[list[nn.Module], SharedMBConv | None]:
    """The candidate modules of one layer with entangled MBConvs, and their shared weights (None without MBConvs).

    Non-MBConv candidates (the identity) are built as usual (`jmsnas.space.ops.build_op`).
    """
    mbconvs = [CANDIDATES[n] for n in names if CANDIDATES[n].kind == "mbconv"]
    if not mbconvs:
        return [build_op(n, in_channels, out_channels, stride, dims) for n in names], None
    shared = SharedMBConv(in_channels, out_channels, stride, max(op.kernel_size for op in mbconvs),
                          max(op.expansion for op in mbconvs), dims)
    cands = [EntangledCandidate(shared, n) if CANDIDATES[n].kind == "mbconv"
             else build_op(n, in_channels, out_channels, stride, dims) for n in names]
    return cands, shared
