"""The gates' output activations, and their scaled forms used for an identity start.

* `ScaledSigmoid(scale, offset)`: `scale * sigmoid(x) + offset`. With `scale=2` its value
  at 0 is exactly 1 (the identity gate of `add_attention(init="identity")`, NFNet's
  scaled SE sigmoid); with `scale=2, offset=-1` it is exactly 0 at 0 (BAM's `1 + act`).
* `HardSigmoid(scale)`: `scale * relu6(x + 3) / 6`, the hard sigmoid of MobileNetV3 as
  CenterMask's eSE writes it; `scale=2` gives exactly 1 at 0.

Exactness: `sigmoid(0)` is exactly 0.5 and `relu6(3) / 6` exactly 0.5 in every float
format, and multiplying by 2 or adding -1 is exact, so the identity values are exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ScaledSigmoid", "HardSigmoid"]


class ScaledSigmoid(nn.Module):
    """`scale * sigmoid(x) + offset`; with scale 2 its value at 0 is exactly 1 (identity gate)."""

    def __init__(self, scale: float = 2.0, offset: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.offset = offset

    def forward(self, x: Tensor) -> Tensor:
        y = self.scale * torch.sigmoid(x)
        return y + self.offset if self.offset else y

    def extra_repr(self) -> str:
        return f"scale={self.scale}" + (f", offset={self.offset}" if self.offset else "")


class HardSigmoid(nn.Module):
    """`scale * relu6(x + 3) / 6`: 0 below -3, `scale` above 3, `scale / 2` at 0."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(x + 3.0) / 6.0
        return self.scale * y if self.scale != 1.0 else y

    def extra_repr(self) -> str:
        return f"scale={self.scale}" if self.scale != 1.0 else ""
