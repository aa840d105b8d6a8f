"""Style-based recalibration: SRM (Lee, Kim & Nam, "SRM: A Style-based Recalibration
Module for Convolutional Neural Networks", ICCV 2019).

`SRM` takes (B, C, *spatial) (`dims` = 1, 2 or 3; unbatched (C, *spatial) too) and
returns `x * gate(x)`, the same shape; the gate is (B, C, 1, ...):

```text
mu, sigma = mean and standard deviation of x over the spatial dims    # style pooling, (B, C) each
z = cfc[:, 0] * mu + cfc[:, 1] * sigma                                 # channel-wise FC, (B, C)
gate = sigmoid(bn(z))                                                  # BatchNorm over (B, C)
```

`cfc` (C, 2) holds each channel's own two weights (no mixing across channels), `bn` is a
`BatchNorm1d(C)`: in training one sample's gate depends on the batch (with B = 1 and one
value per channel torch refuses to train it, as in the official code).

Departures from the official code, and why
------------------------------------------
Standard deviation: unbiased (divisor n - 1), as the official `Tensor.std`; for a single
spatial position it is 0 here, where the official code gives NaN (0 / 0), so SRM stays
finite on 1 x 1 maps.

BatchNorm layout: the official code applies `BatchNorm2d` to (B, C, 1, 1); we apply
`BatchNorm1d` to (B, C), the same normalisation with the same parameter and buffer names
and shapes, so its state dict (`cfc`, `bn.*`) loads unchanged, for any `dims`.

Initialisation: `cfc` starts at 0, as in the official code (the gate starts at
`sigmoid(bn.bias) = 0.5`). Identity start (`init_identity`): `cfc` and `bn.bias` zeroed,
`bn`'s running statistics reset, `2 * sigmoid`, so the gate is exactly 1; `cfc` still gets gradients through the batch
statistics of `bn` in training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._act import ScaledSigmoid
from ._base import Gate, zero_

__all__ = ["SRM"]


class SRM(Gate):
    """Style-based Recalibration Module: per-channel mean and std, a channel-wise FC, BN, sigmoid.

    Input (B, C, H, W) -> output (B, C, H, W), `x * gate(x)`; with `dims=1`/`dims=3`,
    (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too. The gate is (B, C, 1, 1).

    Args:
        channels: C.
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            `torch.autocast`).

    See the module docstring for the formula and the departures from the official code.
    """

    def __init__(
        self,
        channels: int,
        *,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, dims=dims)
        kw = {"device": device, "dtype": dtype}
        self.cfc = nn.Parameter(torch.zeros(channels, 2, **kw))
        self.bn = nn.BatchNorm1d(channels, **kw)
        self.gate_act: nn.Module = nn.Sigmoid()

    def _gate(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)  # (B, C, n)
        n = flat.shape[-1]
        mu = flat.sum(-1, keepdim=True) / (n + (n == 0))  # (B, C, 1); 0 for an empty map
        ss = (flat - mu).square().sum(-1)  # (B, C)
        sigma = (ss / (n - 1 + (n == 1))).sqrt()  # unbiased; 0 for n = 1 (no branch: traceable)
        mu = mu.squeeze(-1)  # (B, C)
        z = mu * self.cfc[:, 0] + sigma * self.cfc[:, 1]  # (B, C)
        g = self.gate_act(self.bn(z))  # (B, C)
        return g[(...,) + (None,) * self.dims]  # (B, C, 1, ...)

    def init_identity(self) -> None:
        """Zero `cfc` and `bn.bias`, reset `bn`'s statistics, use `2 * sigmoid`: the gate is exactly 1."""
        zero_(self.cfc, self.bn.bias)
        self.bn.reset_running_stats()  # eval mode too: (0 - 0) / sqrt(1 + eps) * w + 0 = 0
        self.gate_act = ScaledSigmoid(2.0)
