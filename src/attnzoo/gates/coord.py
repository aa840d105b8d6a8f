"""Coordinate attention (Hou, Zhou & Feng, "Coordinate Attention for Efficient Mobile
Network Design", CVPR 2021).

`CoordAttention` takes (B, C, H, W) (unbatched (C, H, W) too; 2-D by definition: it pools
along the two image axes separately) and returns `x * gate(x)`, the same shape. Each
channel gets one weight per row and one per column, and the gate is their product:

```text
zh = mean of x over W, (B, C, H);  zw = mean of x over H, (B, C, W)
y = h_swish(bn(conv1(cat([zh, zw]))))          # one shared 1x1 conv C -> mip over the H + W positions
yh, yw = split(y, [H, W])                       # (B, mip, H), (B, mip, W)
gate = sigmoid(conv_h(yh))[..., :, None] * sigmoid(conv_w(yw))[..., None, :]    # (B, C, H, W)
```

with `mip = max(min_hidden, C // reduction)` (paper and code: reduction 32, at least 8
channels), `h_swish(t) = t * relu6(t + 3) / 6` and `bn` a `BatchNorm2d(mip)` whose batch
statistics are taken over both the row and the column descriptors, as in the code.

Departures from the official code, and why
------------------------------------------
None in the function: the layers are the official `conv1`, `bn1`, `conv_h`, `conv_w`
(1x1 `nn.Conv2d` with biases) under the same names, so its state dict loads unchanged;
we lay the descriptors out as (B, C, H + W, 1) as it does. The official module returns
`identity * a_w * a_h`; we return `x * (a_h * a_w)`, equal up to rounding, so that
`gate(x)` is the one factor applied. The output channels are C (the official code has a
separate `oup`; a gate keeps the shape).

Identity start (`init_identity`): `conv_h` and `conv_w` zeroed, `2 * sigmoid` for both
factors, so the gate is exactly 1 * 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .channel import hidden_width
from ._act import ScaledSigmoid
from ._base import Gate, zero_

__all__ = ["CoordAttention"]


class _HSwish(nn.Module):
    """`t * relu6(t + 3) / 6` (MobileNetV3's hard swish, as the official code writes it)."""

    def forward(self, t: Tensor) -> Tensor:
        return t * (F.relu6(t + 3.0) / 6.0)


class CoordAttention(Gate):
    """Coordinate attention: row and column descriptors, a shared 1x1 conv, two sigmoid factors.

    Input (B, C, H, W) -> output (B, C, H, W), `x * gate(x)`; unbatched (C, H, W) too.
    The gate is (B, C, H, W), the product of a (B, C, H, 1) and a (B, C, 1, W) factor.

    Args:
        channels: C.
        reduction: r; the hidden width is `max(min_hidden, channels // reduction)` (default 32).
        min_hidden: lower bound on the hidden width (default 8, as in the official code).
        dims: must be 2 (ValueError otherwise).
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            `torch.autocast`).

    See the module docstring for the formula and the (cosmetic) departures from the code.
    """

    supported_dims = (2,)
    full_size = True

    def __init__(
        self,
        channels: int,
        reduction: int = 32,
        *,
        min_hidden: int = 8,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, dims=dims)
        mip = hidden_width(channels, reduction, min_hidden)
        self.reduction = reduction
        self.hidden_channels = mip
        kw = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(channels, mip, 1, **kw)
        self.bn1 = nn.BatchNorm2d(mip, **kw)
        self.act = _HSwish()
        self.conv_h = nn.Conv2d(mip, channels, 1, **kw)
        self.conv_w = nn.Conv2d(mip, channels, 1, **kw)
        self.gate_act: nn.Module = nn.Sigmoid()

    def _gate(self, x: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        zh = x.mean(3, keepdim=True)  # (B, C, H, 1)
        zw = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat((zh, zw), dim=2))))  # (B, mip, H + W, 1)
        yh, yw = torch.split(y, [h, w], dim=2)  # (B, mip, H, 1), (B, mip, W, 1)
        a_h = self.gate_act(self.conv_h(yh))  # (B, C, H, 1)
        a_w = self.gate_act(self.conv_w(yw.transpose(2, 3)))  # (B, C, 1, W)
        return a_h * a_w  # (B, C, H, W)

    def init_identity(self) -> None:
        """Zero `conv_h` and `conv_w`, use `2 * sigmoid`: both factors are exactly 1."""
        zero_(self.conv_h.weight, self.conv_h.bias, self.conv_w.weight, self.conv_w.bias)
        self.gate_act = ScaledSigmoid(2.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction}, hidden={self.hidden_channels}"
