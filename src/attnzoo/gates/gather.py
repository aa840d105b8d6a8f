"""Gather-Excite (Hu, Shen, Albanie, Sun & Vedaldi, "Gather-Excite: Exploiting Feature
Context in Convolutional Neural Networks", NeurIPS 2018): GE-theta-minus and GE-theta.

`GatherExcite` takes (B, C, *spatial) (`dims` = 1, 2 or 3; unbatched (C, *spatial) too)
and returns `x * gate(x)`, the same shape. The gather step summarises each channel over
neighbourhoods of `extent` e positions per spatial dim (or the whole map, e = 0); the
excite step gives every position the summary of its own neighbourhood, through a sigmoid:

```text
g = gather(x)                          # (B, C, ceil(H / e), ceil(W / e)), or (B, C, 1, 1) for e = 0
gate[..., i, j] = sigmoid(g[..., i // e, j // e])      # (B, C, H, W); (B, C, 1, 1) for e = 0
```

* GE-theta-minus (`params=False`, the default): the gather is an average over e x e
  windows with stride e (partial windows at the border average what they hold), or the
  global mean for e = 0, which makes it SE without the excitation MLP. No parameters.
* GE-theta (`params=True`): the gather is log2(e) depthwise k=3, stride-2 convolutions
  (padding 1, no bias), each followed by BatchNorm, with ReLU between them; e must be a
  power of two >= 2.

Departures from the paper and the code, and why
-----------------------------------------------
The official code is Caffe network definitions for the global-extent models only. GE-theta
with global extent uses one depthwise conv whose kernel is the whole feature map, which
fixes the input size when the gate is built; we do not offer it (`params=True` needs a
finite extent), so a gate works at any input size. GE-theta-plus (an SE-style MLP after
the gather) is not offered.

Windows and excite: the paper's excite is nearest-neighbour interpolation back to the
input size. We give position i the summary of unit i // e (repeat each unit e times,
crop to the input size), which is that interpolation whenever e divides the size and
keeps every position with its own window otherwise. timm's parameter-free gather uses
overlapping (2e - 1)-wide windows with stride e instead; ours follow the paper's
"e x e" description.

Identity start (`init_identity`): GE-theta zeroes its last conv and the last BatchNorm's
bias, resets that BatchNorm's running statistics and uses `2 * sigmoid` (exactly 1).
GE-theta-minus has no parameters, so its gate (a sigmoid of the input's own means) cannot
be made 1: `init_identity` raises ValueError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive_int
from ._act import ScaledSigmoid
from ._base import BATCHNORMS, CONVS, Gate, zero_

__all__ = ["GatherExcite"]



def _window_sum(x: Tensor, e: int, dims: int) -> Tensor:
    """Sums over e x e windows with stride e, the last ones partial: (B, C, *S) -> (B, C, *ceil(S / e)).

    Zero-pads each spatial dim to a multiple of e and folds it into (S / e, e); any dtype,
    any size (`avg_pool3d` has no bfloat16 kernel on CPU and refuses maps smaller than e).
    """
    spatial = range(2, 2 + dims)
    xp = F.pad(x, [p for d in reversed(spatial) for p in (0, (-x.shape[d]) % e)])  # sizes now multiples of e
    windows = [s for d in spatial for s in (xp.shape[d] // e, e)]
    folded = xp.reshape(xp.shape[0], xp.shape[1], *windows)  # (B, C, H/e, e, W/e, e)
    return folded.sum(tuple(range(3, 3 + 2 * dims, 2)))  # (B, C, H/e, W/e)


class GatherExcite(Gate):
    """Gather-Excite: average (GE-theta-minus) or strided depthwise-conv (GE-theta) gather,
    nearest-neighbour excite, sigmoid.

    Input (B, C, H, W) -> output (B, C, H, W), `x * gate(x)`; with `dims=1`/`dims=3`,
    (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too. The gate is (B, C, H, W), or
    (B, C, 1, 1) for the global extent.

    Args:
        channels: C.
        extent: e, the neighbourhood width per spatial dim; 0 (default) = the whole map.
        params: False (default) for GE-theta-minus, True for GE-theta (e a power of two >= 2).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            `torch.autocast`).

    See the module docstring for the formula and the departures from the paper.
    """

    def __init__(
        self,
        channels: int,
        extent: int = 0,
        *,
        params: bool = False,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, dims=dims)
        if isinstance(extent, bool) or not isinstance(extent, int):
            raise TypeError(f"extent must be an int (0 for the whole map), got {type(extent).__name__}")
        if extent != 0:
            check_positive_int("extent", extent)
        if not isinstance(params, bool):
            raise TypeError(f"params must be a bool, got {type(params).__name__}")
        self.extent = extent
        self.params = params
        self.full_size = extent != 0
        self.gather: nn.Sequential | None = None
        if params:
            if extent < 2 or extent & (extent - 1):
                raise ValueError(
                    f"extent must be a power of two >= 2 with params=True (log2(extent) stride-2 convs), got {extent}"
                )
            layers: list[nn.Module] = []
            n = extent.bit_length() - 1
            for i in range(n):
                layers.append(CONVS[dims](channels, channels, 3, stride=2, padding=1, groups=channels,
                                          bias=False, device=device, dtype=dtype))
                layers.append(BATCHNORMS[dims](channels, device=device, dtype=dtype))
                if i < n - 1:
                    layers.append(nn.ReLU())
            self.gather = nn.Sequential(*layers)
        self.gate_act: nn.Module = nn.Sigmoid()

    def _gate(self, x: Tensor) -> Tensor:
        e = self.extent
        if self.gather is not None:
            g = self.gather(x)  # (B, C, ceil(H / e), ...)
        elif e == 0:
            return self.gate_act(self._spatial_mean(x))  # (B, C, 1, ...)
        else:
            ones = torch.ones_like(x[:1, :1])  # (1, 1, *spatial)
            g = _window_sum(x, e, self.dims) / _window_sum(ones, e, self.dims)  # (B, C, ceil(H / e), ...)
        for d in range(2, 2 + self.dims):  # excite: unit i // e to position i, per spatial dim
            g = g.repeat_interleave(e, dim=d).narrow(d, 0, x.shape[d])
        return self.gate_act(g)  # (B, C, H, W)

    def init_identity(self) -> None:
        """GE-theta: zero the last conv and the last BatchNorm's bias (statistics reset), use `2 * sigmoid`."""
        if self.gather is None:
            raise ValueError(
                "GatherExcite(params=False) (GE-theta-minus) has no parameters: its gate, a sigmoid "
                "of the input's own means, cannot start at exactly 1; use params=True or init='default'"
            )
        conv, bn = self.gather[-2], self.gather[-1]
        zero_(conv.weight, bn.bias)
        bn.reset_running_stats()  # eval mode too: (0 - 0) / sqrt(1 + eps) * w + 0 = 0
        self.gate_act = ScaledSigmoid(2.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, extent={self.extent}, params={self.params}"
