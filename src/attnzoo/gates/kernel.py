"""Attention across convolution branches: Selective Kernel (SKNet) and Split Attention (ResNeSt).

Both are convolution units: they take (B, C_in, *spatial) and return (B, C_out, *spatial')
(spatial' = spatial / stride), and replace the 3x3 convolution of a bottleneck block; they
are not gates put after an existing layer, so `add_attention` refuses them (the reason is
the class attribute `retrofit_error`; `init_identity()` raises it as a `ValueError`). Build
them into a block instead, e.g. `conv2 = SelectiveKernel(width, stride=s)`.

Both compute R branch maps U_r (B, C_out, *spatial'), pool their sum over the positions to
s (B, C_out), map s through a small bottleneck to R logits per channel, take the softmax
across the branches, and return `sum_r a_r * U_r`. `gate(x)` returns a, shape
(B, R, C_out, 1, ...) (one 1 per spatial dim): the weights multiplying each branch; they
sum to 1 over R.

* `SelectiveKernel` (Li et al., "Selective Kernel Networks", CVPR 2019), eq. 1-6: branch m
  is a grouped 3x3 conv with dilation m + 1 (3x3, then 5x5 as a dilated 3x3, ...), BN,
  ReLU; `z = ReLU(BN(fc1 s))` with d = max(C_out / r, L) units (r = 16, L = 32), and
  `fc2` maps z to the M x C_out logits (the paper's A, B, ... stacked).
* `SplitAttention` (Zhang et al., "ResNeSt: Split-Attention Networks", 2020), the
  radix-major split-attention conv: ONE grouped conv (groups = cardinality x radix) gives
  the R = radix splits, BN, ReLU; `fc1` (grouped by cardinality, bias) to
  max(C_in x radix / reduction, 32) units, BN, ReLU, `fc2` (grouped, bias); softmax over
  the radix inside each cardinal group (sigmoid for radix 1).

`dims` (1, 2 or 3, default 2) picks Conv1d/2d/3d and BatchNorm1d/2d/3d for the branches, as
for the other gates; unbatched (C_in, *spatial) inputs are accepted. An empty batch gives an
empty result; an empty spatial map is refused with a `ValueError` (torch's convs refuse it).

Choices, compared with the papers and the official code
-------------------------------------------------------
SK: no biases, BN after every branch conv and after fc1, one fc2 for all branches, as the
official (Caffe) SKNet-50; the fully connected layers are `nn.Linear` on the pooled vector
(the official 1x1 convs; reshape (out, in, 1, 1) to (out, in)). BatchNorm on the pooled
(B, d) vector makes one sample's weights depend on the batch in training, as in that code
(CBAM's spatial gate drops its BatchNorm for that reason; here BN is part of the paper's
eq. 4, so it stays); in eval mode it is a fixed affine map. Training with a batch of one
fails in that BatchNorm, as in torch.
Split attention: as the official `SplAtConv2d` with its defaults (no conv bias, BN, no
DropBlock, `reduction_factor` 4, 32 units at least), its channel order (radix-major splits;
logits grouped by cardinality, radix-major inside a group) included, so its weights load
(fc1/fc2 are `nn.Conv1d` with kernel 1 here: reshape (out, in, 1, 1) to (out, in, 1)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_positive_int, check_spatial_dims, refuse_torchscript
from ..channel import hidden_width
from .free import check_gate_input, is_unbatched, with_spatial_ones

__all__ = ["SelectiveKernel", "SplitAttention"]

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_REFUSAL = (
    "{name} is a convolution unit (it replaces a block's 3x3 convolution and changes its "
    "output), not a gate that can follow an existing layer; build it into the block instead"
)


def _check_groups(name: str, groups: int, **widths: int) -> int:
    groups = check_positive_int(name, groups)
    for what, width in widths.items():
        if width % groups:
            raise ValueError(f"{name} must divide {what}, got {name}={groups} and {what}={width}")
    return groups


class _BranchAttention(nn.Module):
    """Shared parts: checks, the branch selection `sum_r a_r U_r`, the refusals."""

    dims: int = 2
    in_channels: int
    out_channels: int
    retrofit_error: str | None = None  # set for each subclass: why add_attention refuses it

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        cls.retrofit_error = _REFUSAL.format(name=cls.__name__)

    def init_identity(self) -> None:
        """Always raises: a convolution unit has no identity start."""
        raise ValueError(f"{self.retrofit_error}; init='identity' does not apply")

    def _batched(self, x: Tensor) -> tuple[Tensor, bool]:
        check_gate_input(x, type(self).__name__, self.dims, self.in_channels, self._dtype())
        unbatched = is_unbatched(x, self.dims)
        return (x.unsqueeze(0) if unbatched else x), unbatched

    def _dtype(self) -> torch.dtype:  # pragma: no cover - overridden
        raise NotImplementedError

    def _branches_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - overridden
        """U (B, R, C_out, *spatial') and the attention logits (B, R, C_out) of a batched x."""
        raise NotImplementedError

    def _softmax(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits, dim=1)  # across the branches

    def gate(self, x: Tensor) -> Tensor:
        """Branch weights a, (B, R, C_out, 1, ...) ((R, C_out, 1, ...) unbatched)."""
        xb, unbatched = self._batched(x)
        a = self._softmax(self._branches_and_logits(xb)[1])  # (B, R, C_out)
        a = with_spatial_ones(a, self.dims)  # (B, R, C_out, 1, ...)
        return a.squeeze(0) if unbatched else a

    def forward(self, x: Tensor) -> Tensor:
        """Return `sum_r a_r * U_r`, (B, C_out, *spatial')."""
        xb, unbatched = self._batched(x)
        u, logits = self._branches_and_logits(xb)
        a = self._softmax(logits)  # (B, R, C_out)
        out = (u * with_spatial_ones(a, self.dims)).sum(1)  # (B, C_out, *spatial')
        return out.squeeze(0) if unbatched else out

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises


class SelectiveKernel(_BranchAttention):
    """SK convolution: M dilated grouped 3x3 branches, softmax attention across them.

    Input (B, C_in, *spatial) -> (B, C_out, *spatial / stride); unbatched too.

    Args:
        channels: C_in.
        reduction: r; the hidden width is d = max(min_hidden, C_out // r) (default 16).
        out_channels: C_out (default C_in).
        branches: M, the number of branches (default 2: 3x3 and 5x5); branch m has dilation m + 1.
        groups: G, the groups of each branch conv (default 32, the paper's); must divide C_in and C_out.
        min_hidden: L, the least hidden width (default 32, the paper's).
        stride: the stride of every branch (default 1).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must share it (or run under `torch.autocast`).
    """

    def __init__(self, channels: int, reduction: int = 16, *, out_channels: int | None = None,
                 branches: int = 2, groups: int = 32, min_hidden: int = 32, stride: int = 1, dims: int = 2,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        out = check_positive_int("out_channels", channels if out_channels is None else out_channels)
        hidden = hidden_width(out, reduction, min_hidden)
        self.dims = check_spatial_dims("dims", dims)
        groups = _check_groups("groups", groups, channels=channels, out_channels=out)
        m = check_positive_int("branches", branches)
        stride = check_positive_int("stride", stride)
        self.in_channels, self.out_channels, self.reduction, self.hidden_channels = channels, out, reduction, hidden
        self.branches, self.groups, self.stride = m, groups, stride
        kw = {"device": device, "dtype": dtype}
        self.convs = nn.ModuleList(
            nn.Sequential(
                _CONVS[dims](channels, out, 3, stride, padding=i + 1, dilation=i + 1, groups=groups, bias=False, **kw),
                _NORMS[dims](out, **kw),
                nn.ReLU(),
            )
            for i in range(m)
        )
        self.fc1 = nn.Linear(out, hidden, bias=False, **kw)
        self.bn = nn.BatchNorm1d(hidden, **kw)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, m * out, bias=False, **kw)

    def _dtype(self) -> torch.dtype:
        return self.fc1.weight.dtype

    def _branches_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = torch.stack([branch(x) for branch in self.convs], dim=1)  # (B, M, C_out, *spatial')
        s = u.sum(1).mean(tuple(range(2, 2 + self.dims)))  # fuse, then pool: (B, C_out)
        z = self.act(self.bn(self.fc1(s)))  # (B, d)
        return u, self.fc2(z).unflatten(1, (self.branches, self.out_channels))  # (B, M, C_out)

    def extra_repr(self) -> str:
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return (f"{self.in_channels}, {self.out_channels}, branches={self.branches}, groups={self.groups}, "
                f"hidden={self.hidden_channels}, stride={self.stride}{dims}")


class SplitAttention(_BranchAttention):
    """ResNeSt split-attention conv: one grouped conv gives `radix` splits, softmax across them.

    Input (B, C_in, *spatial) -> (B, C_out, *spatial'); unbatched too.

    Args:
        channels: C_in.
        reduction: the official `reduction_factor`; hidden width max(min_hidden, C_in * radix // reduction) (default 4).
        out_channels: C_out (default C_in).
        kernel_size: of the conv (default 3).
        stride: of the conv (default 1).
        padding: of the conv (default `kernel_size // 2`).
        dilation: of the conv (default 1).
        radix: R, the splits per cardinal group (default 2).
        groups: the cardinality K (default 1); must divide C_in, C_out and the hidden width.
        min_hidden: the least hidden width (default 32, as the official code).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must share it (or run under `torch.autocast`).
    """

    def __init__(self, channels: int, reduction: int = 4, *, out_channels: int | None = None, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, dilation: int = 1, radix: int = 2, groups: int = 1,
                 min_hidden: int = 32, dims: int = 2, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        out = check_positive_int("out_channels", channels if out_channels is None else out_channels)
        radix = check_positive_int("radix", radix)
        hidden = hidden_width(channels * radix, reduction, min_hidden)
        self.dims = check_spatial_dims("dims", dims)
        groups = _check_groups("groups", groups, channels=channels, out_channels=out, hidden_width=hidden)
        k = check_positive_int("kernel_size", kernel_size)
        pad = k // 2 if padding is None else padding
        self.in_channels, self.out_channels, self.reduction, self.hidden_channels = channels, out, reduction, hidden
        self.radix, self.groups = radix, groups
        kw = {"device": device, "dtype": dtype}
        self.conv = _CONVS[dims](channels, out * radix, k, stride, pad, dilation, groups=groups * radix, bias=False, **kw)
        self.bn0 = _NORMS[dims](out * radix, **kw)
        self.act0 = nn.ReLU()
        self.fc1 = nn.Conv1d(out, hidden, 1, groups=groups, **kw)
        self.bn1 = nn.BatchNorm1d(hidden, **kw)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Conv1d(hidden, out * radix, 1, groups=groups, **kw)

    def _dtype(self) -> torch.dtype:
        return self.conv.weight.dtype

    def _branches_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r, k, c = self.radix, self.groups, self.out_channels
        u = self.act0(self.bn0(self.conv(x)))  # (B, R * C_out, *spatial')
        u = u.unflatten(1, (r, c))  # (B, R, C_out, *spatial'): split r is channels [r C_out, (r+1) C_out)
        s = u.sum(1).mean(tuple(range(2, 2 + self.dims)), keepdim=False).unsqueeze(-1)  # (B, C_out, 1)
        logits = self.fc2(self.act1(self.bn1(self.fc1(s))))  # (B, R * C_out, 1), grouped by cardinality
        logits = logits.squeeze(-1).unflatten(1, (k, r, c // k)).transpose(1, 2)  # (B, R, K, C_out / K)
        return u, logits.flatten(2)  # (B, R, C_out)

    def _softmax(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits, dim=1) if self.radix > 1 else torch.sigmoid(logits)

    def extra_repr(self) -> str:
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.conv.kernel_size}, radix={self.radix}, "
                f"groups={self.groups}, hidden={self.hidden_channels}, stride={self.conv.stride}{dims}")
