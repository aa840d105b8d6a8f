"""Channel gates without a bottleneck: ECA (Wang et al., CVPR 2020) and effective SE
(eSE, Lee & Park, "CenterMask", CVPR 2020).

Both take (B, C, *spatial) (`dims` = 1, 2 or 3 spatial dims; unbatched (C, *spatial) too)
and return `x * gate(x)`, the same shape; `gate(x)` is (B, C, 1, ...), one weight per
sample and channel, computed from the spatial mean `z` (B, C) of `x`:

* `ECA`: `gate = sigmoid(conv1d_k(z))`, a 1-D convolution ACROSS CHANNELS with one
  k-tap kernel (no bias, zero padding (k - 1) // 2), so each channel's weight depends on
  its k neighbours; k = `eca_kernel_size(C)` unless given.
* `EffectiveSE`: `gate = hard_sigmoid(W z + b)`, one C x C fully connected layer (no
  reduction, so no channel information is lost), `hard_sigmoid(t) = relu6(t + 3) / 6`.

Departures from the official code, and why
------------------------------------------
ECA kernel size: the paper's rule `k = |log2(C) / gamma + b / gamma|_odd` (gamma = 2,
b = 1), rounded as the authors' code listing and timm round it: `t = int(|(log2 C + b) /
gamma|)`, then `t` if odd else `t + 1` (so ties go up: C = 2048 gives 7). This gives 5, 5, 5, 7 for
ResNet-50's 256, 512, 1024, 2048 channels (86 parameters in 16 blocks); the released
ECA-Net50 used 3, 5, 5, 7 ("k3557"; the paper's "80 parameters") and the repository's
ResNet code defaults to 3 everywhere: pass `kernel_size` to reproduce either. `log2` is
exact for powers of two (`math.log(C, 2)`, as in that listing, can miss by one ulp).

ECA descriptor layout: the official code runs `nn.Conv1d(1, 1, k)` on (B, 1, C); so do
we, so its `conv.weight` (1, 1, k) loads unchanged.

eSE layer: `fc` is `nn.Linear(C, C)` on the pooled (B, C) vector, the same function as
the official 1x1 `nn.Conv2d`; to load its weights reshape `fc.weight` from (C, C, 1, 1)
to (C, C). The official constructor takes a `reduction` it never uses; we take none.

Identity start (`init_identity`, used by `add_attention(init="identity")`): ECA zeroes
`conv` and uses `2 * sigmoid`; eSE zeroes `fc` and uses `2 * hard_sigmoid` (both exactly
1 at 0, range (0, 2)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_positive_int
from ._act import HardSigmoid, ScaledSigmoid
from ._base import Gate, zero_

__all__ = ["ECA", "EffectiveSE", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive kernel size: the odd number at or just above `int(|(log2 C + b) / gamma|)`."""
    channels = check_positive_int("channels", channels)
    gamma = check_positive_int("gamma", gamma)
    if isinstance(b, bool) or not isinstance(b, int):
        raise TypeError(f"b must be an int, got {type(b).__name__}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(Gate):
    """Efficient Channel Attention: a k-tap 1-D conv across the pooled channels.

    Input (B, C, H, W) -> output (B, C, H, W), `x * gate(x)`; with `dims=1`/`dims=3`,
    (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too. The gate is (B, C, 1, 1):

    ```text
    z = mean of x over H, W                                         # (B, C)
    gate[b, c] = sigmoid(sum_j w[j] * z[b, c + j - (k - 1) // 2])   # z = 0 outside 0..C-1
    ```

    Args:
        channels: C.
        kernel_size: k, a positive odd int; default `eca_kernel_size(C, gamma, b)`.
        gamma: gamma of the adaptive rule (paper: 2).
        b: b of the adaptive rule (paper: 1).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            `torch.autocast`).

    See the module docstring for the kernel-size rule and the departures from the code.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        *,
        gamma: int = 2,
        b: int = 1,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, dims=dims)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, b)
        k = check_positive_int("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding (k - 1) // 2 keeps C), got {k}")
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False, device=device, dtype=dtype)
        self.gate_act: nn.Module = nn.Sigmoid()

    def _gate(self, x: Tensor) -> Tensor:
        z = self._spatial_mean(x)  # (B, C, 1, ...)
        y = self.conv(z.flatten(1).unsqueeze(1))  # (B, 1, C)
        return self.gate_act(y.view_as(z))  # (B, C, 1, ...)

    def init_identity(self) -> None:
        """Zero `conv`, use `2 * sigmoid`: the gate is exactly 1 (see the module docstring)."""
        zero_(self.conv.weight)
        self.gate_act = ScaledSigmoid(2.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}"


class EffectiveSE(Gate):
    """Effective Squeeze-Excitation (eSE, CenterMask/VoVNetV2): one C x C layer, hard sigmoid.

    Input (B, C, H, W) -> output (B, C, H, W), `x * gate(x)`; with `dims=1`/`dims=3`,
    (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too. The gate is (B, C, 1, 1):

    ```text
    z = mean of x over H, W                  # (B, C)
    gate = relu6(fc(z) + 3) / 6              # fc: C -> C with a bias
    ```

    Args:
        channels: C.
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            `torch.autocast`).
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
        self.fc = nn.Linear(channels, channels, bias=True, device=device, dtype=dtype)
        self.gate_act: nn.Module = HardSigmoid()

    def _gate(self, x: Tensor) -> Tensor:
        z = self._spatial_mean(x)  # (B, C, 1, ...)
        return self.gate_act(self.fc(z.flatten(1)).view_as(z))  # (B, C, 1, ...)

    def init_identity(self) -> None:
        """Zero `fc`, use `2 * hard_sigmoid`: the gate is exactly 1 (see the module docstring)."""
        zero_(self.fc.weight, self.fc.bias)
        self.gate_act = HardSigmoid(2.0)
