"""Gates that weight channels and positions jointly: BAM (Park, Woo, Lee & Kweon,
"BAM: Bottleneck Attention Module", BMVC 2018) and triplet attention (Misra, Nalamada,
Arasanipalai & Hou, "Rotate to Attend: Convolutional Triplet Attention Module", WACV 2021).

Both take (B, C, *spatial) and return `x * gate(x)` with a full-size gate (B, C, *spatial).

* `BAM` (`dims` = 1, 2 or 3; unbatched too): a channel branch and a spatial branch,
  broadcast to (B, C, H, W), summed, then `gate = 1 + sigmoid(Mc + Ms)` (paper eq. 1-2):

  ```text
  Mc = fc2(relu(bn(fc1(mean of x over H, W))))                  # (B, C, 1, 1), C -> C/r -> C
  Ms = conv1x1(relu(bn(dil3x3(relu(bn(dil3x3(relu(bn(conv1x1(x))))))))))   # (B, 1, H, W)
  ```

  with reduction r = 16 and dilation d = 4 (3x3 convs, padding d, keeping H, W).
* `TripletAttention` (2-D only; unbatched too): three branches, each a CBAM-like spatial
  gate on a rotated view of x: Z-pool = [max; mean] over one axis, a k x k conv (k = 7, no
  bias), BatchNorm, sigmoid; the gate is the average of the three:

  ```text
  s_cw = sigmoid(bn(conv(zpool over H)))    # (B, 1, C, W) -> (B, C, 1, W)
  s_hc = sigmoid(bn(conv(zpool over W)))    # (B, 1, H, C) -> (B, C, H, 1)
  s_hw = sigmoid(bn(conv(zpool over C)))    # (B, 1, H, W)
  gate = (s_cw + s_hc + s_hw) / 3           # (B, C, H, W); without s_hw, / 2 (no_spatial=True)
  ```

Departures from the official code, and why
------------------------------------------
BAM combination: the paper sums the branches, `sigmoid(Mc + Ms)`; the official module
multiplies them, `sigmoid(Mc * Ms)`. We follow the paper by default; `combine="product"`
gives the released code's function. BAM's channel branch places BatchNorm on the hidden
layer, as the official code does (the paper's eq. 3 writes it on the output). The hidden
width is `max(1, C // r)`, never 0 (the code's bare `C // r` is 0 for C < r). The code's
average pool takes the map as square (kernel = H); we average over every spatial dim.

Triplet: the layers match the official code (conv without bias, `BatchNorm2d(1)` with
eps 1e-5 and momentum 0.01, Z-pool order [max; mean], the (H, C) plane for the W branch).
The official module returns `(x*s_hw + x*s_cw + x*s_hc) / 3`; we return `x * gate`, equal
up to rounding, so that `gate(x)` is the one factor applied and an all-ones gate returns
x bit for bit.

Identity start (`init_identity`): BAM zeroes `fc2` and the last spatial conv (only that
conv with `combine="product"`, so the channel branch keeps its gradient) and replaces the
sigmoid by `2 * sigmoid - 1`, exactly 0 at 0, so `1 + act` is exactly 1 (the factor's
range becomes (0, 2)); triplet zeroes the three convs and BatchNorm biases (their
running statistics reset) and uses `2 * sigmoid`, so each branch is exactly 1 and so is
their mean.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_positive_int
from ._act import ScaledSigmoid
from ._base import BATCHNORMS, CONVS, Gate, zero_
from .channel import hidden_width
from .spatial import check_odd_kernel_size

__all__ = ["BAM", "TripletAttention"]


class BAM(Gate):
    """Bottleneck Attention Module: channel and dilated-conv spatial branches, `1 + sigmoid(sum)`.

    Input (B, C, H, W) -> output (B, C, H, W), `x * gate(x)`; with `dims=1`/`dims=3`,
    (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too. The gate is (B, C, H, W), in (1, 2).
    Training needs a batch of at least 2: the channel branch's `BatchNorm1d` needs more than
    one value per channel (as in the official code).

    Args:
        channels: C.
        reduction: r for both branches; hidden width `max(1, C // r)` (default 16).
        dilation: d of the two 3x3 convs of the spatial branch (default 4).
        combine: "sum" (the paper, default) or "product" (the official code).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            `torch.autocast`).
    """

    full_size = True

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        dilation: int = 4,
        combine: str = "sum",
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, dims=dims)
        hidden = hidden_width(channels, reduction)
        d = check_positive_int("dilation", dilation)
        if combine not in ("sum", "product"):
            raise ValueError(f"combine must be 'sum' or 'product', got {combine!r}")
        self.reduction, self.dilation, self.combine, self.hidden_channels = reduction, d, combine, hidden
        kw = {"device": device, "dtype": dtype}
        conv, bn = CONVS[dims], BATCHNORMS[dims]
        self.fc1 = nn.Linear(channels, hidden, **kw)
        self.bn_c = nn.BatchNorm1d(hidden, **kw)
        self.fc2 = nn.Linear(hidden, channels, **kw)
        self.spatial = nn.Sequential(
            conv(channels, hidden, 1, **kw), bn(hidden, **kw), nn.ReLU(),
            conv(hidden, hidden, 3, padding=d, dilation=d, **kw), bn(hidden, **kw), nn.ReLU(),
            conv(hidden, hidden, 3, padding=d, dilation=d, **kw), bn(hidden, **kw), nn.ReLU(),
            conv(hidden, 1, 1, **kw),
        )
        self.act = nn.ReLU()
        self.gate_act: nn.Module = nn.Sigmoid()

    def _gate(self, x: Tensor) -> Tensor:
        z = self._spatial_mean(x)  # (B, C, 1, ...)
        mc = self.fc2(self.act(self.bn_c(self.fc1(z.flatten(1))))).view_as(z)  # (B, C, 1, ...)
        ms = self.spatial(x)  # (B, 1, *spatial)
        return 1 + self.gate_act(mc + ms if self.combine == "sum" else mc * ms)  # (B, C, *spatial)

    def init_identity(self) -> None:
        """Zero the last layer(s), use `2 * sigmoid - 1`: the gate `1 + act(0)` is exactly 1."""
        last = self.spatial[-1]
        zero_(last.weight, last.bias)
        if self.combine == "sum":
            zero_(self.fc2.weight, self.fc2.bias)
        self.gate_act = ScaledSigmoid(2.0, offset=-1.0)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, reduction={self.reduction}, hidden={self.hidden_channels}, "
                f"dilation={self.dilation}, combine={self.combine!r}")


def _zpool(x: Tensor, dim: int) -> Tensor:
    """Z-pool: [max; mean] of x over `dim`, stacked as 2 channels: (B, 2, ., .)."""
    return torch.stack((x.max(dim).values, x.mean(dim)), dim=1)


class _ZPoolConv(nn.Module):
    """One triplet branch's layers: Conv2d(2 -> 1, k x k, no bias) and BatchNorm2d(1)."""

    def __init__(self, k: int, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, device=device, dtype=dtype)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.bn(self.conv(pooled))


class TripletAttention(Gate):
    """Triplet attention: three rotated Z-pool + conv + BN + sigmoid branches, averaged.

    Input (B, C, H, W) -> output (B, C, H, W), `x * gate(x)`; unbatched (C, H, W) too.
    The gate is (B, C, H, W), in (0, 1).

    Args:
        channels: C (checked against the input; the layers do not depend on it).
        kernel_size: k of the three convs, positive and odd (default 7).
        no_spatial: drop the (H, W) branch and average the other two (default False).
        dims: must be 2 (ValueError otherwise).
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            `torch.autocast`).
    """

    supported_dims = (2,)
    full_size = True

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        *,
        no_spatial: bool = False,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, dims=dims)
        k = check_odd_kernel_size("kernel_size", kernel_size)
        if not isinstance(no_spatial, bool):
            raise TypeError(f"no_spatial must be a bool, got {type(no_spatial).__name__}")
        self.kernel_size, self.no_spatial = k, no_spatial
        self.cw = _ZPoolConv(k, device, dtype)
        self.hc = _ZPoolConv(k, device, dtype)
        self.hw = None if no_spatial else _ZPoolConv(k, device, dtype)
        self.gate_act: nn.Module = nn.Sigmoid()

    def _gate(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        s_cw = self.gate_act(self.cw(_zpool(x, 2)))  # (B, 1, C, W): pooled over H
        s_hc = self.gate_act(self.hc(_zpool(x, 3).transpose(2, 3)))  # (B, 1, H, C): pooled over W
        g = s_cw.view(b, c, 1, w) + s_hc.transpose(2, 3).reshape(b, c, h, 1)  # (B, C, H, W)
        if self.hw is None:
            return g / 2
        return (g + self.gate_act(self.hw(_zpool(x, 1)))) / 3  # (B, C, H, W)

    def init_identity(self) -> None:
        """Zero each branch's conv and BatchNorm bias, use `2 * sigmoid`: the gate is exactly 1."""
        for branch in (self.cw, self.hc, self.hw):
            if branch is not None:
                zero_(branch.conv.weight, branch.bn.bias)
                branch.bn.reset_running_stats()  # eval mode too
        self.gate_act = ScaledSigmoid(2.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}, no_spatial={self.no_spatial}"
