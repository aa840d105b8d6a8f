"""What every gate of `attnzoo.gates` shares: the constructor checks, the input checks,
unbatched inputs, `forward(x) == x * gate(x)` and the identity start.

Shapes: the input is (B, C, *spatial) with `dims` spatial sizes (1, 2 or 3, as
`nn.Conv1d/2d/3d`), or unbatched (C, *spatial); a gate for the unbatched form runs on
(1, C, *spatial) and drops the batch dim again. `gate(x)` broadcasts against `x`.

Empty sizes: an empty batch gives an empty result; with an empty spatial map, pooled
descriptors are 0 (the value of an empty sum, not the NaN of an empty mean) and full-size
gates are empty, so the gate stays finite and the output is the empty `x * gate`.

Identity start: `init_identity()` makes `gate(x)` exactly 1 for every `x`, so a network
that receives the gate keeps its outputs bit for bit (`add_attention(init="identity")`
calls it). Each gate zeroes the last layer before its activation and swaps that activation
for a scaled one whose value at 0 is exactly 1; gates that cannot do this raise
`ValueError` from `init_identity` saying why.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import (
    check_dtype_matches,
    check_feature_map,
    check_positive_int,
    check_spatial_dims,
    is_tracing,
    refuse_torchscript,
)

__all__ = ["Gate", "CONVS", "BATCHNORMS"]

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCHNORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class Gate(nn.Module):
    """Base class: subclasses set `self.gate_act` and implement `_gate` on batched input."""

    supported_dims: tuple[int, ...] = (1, 2, 3)
    full_size: bool = False  # the gate is (B, C, *spatial), not (B, C, 1, ...)

    def __init__(self, channels: int, *, dims: int = 2) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        dims = check_spatial_dims("dims", dims)
        if dims not in self.supported_dims:
            raise ValueError(
                f"dims must be {' or '.join(map(str, self.supported_dims))} for {type(self).__name__} "
                f"(it is defined on (B, C, H, W) maps), got {dims}"
            )
        self.dims = dims

    def _check_input(self, x: Tensor) -> bool:
        """Rank, channels and dtype of `x`; return whether it is batched."""
        if is_tracing(x):  # FX / jit.trace: see attnzoo._checks.is_tracing (batched assumed)
            return True
        name = type(self).__name__
        cdim = check_feature_map("x", x, self.dims, name)
        if x.shape[cdim] != self.channels:
            raise ValueError(
                f"x must have {self.channels} channels (dim {cdim}) for this {name}, "
                f"got {x.shape[cdim]} (shape {tuple(x.shape)})"
            )
        p = next(self.parameters(), None)
        if p is not None:
            check_dtype_matches("x", x, p.dtype, name)
        return cdim == 1

    def _gate(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def gate(self, x: Tensor) -> Tensor:
        """The factor `forward` multiplies `x` by; it broadcasts against `x`."""
        batched = self._check_input(x)
        if self.full_size and not is_tracing(x) and x.shape[-self.dims :].numel() == 0:
            return torch.ones_like(x)  # an empty map: an empty gate (torch's convs refuse empty maps)
        if batched:
            return self._gate(x)
        return self._gate(x.unsqueeze(0)).squeeze(0)

    def forward(self, x: Tensor) -> Tensor:
        """Return `x * gate(x)`, the shape of `x`."""
        return x * self.gate(x)

    def init_identity(self) -> None:
        """Make `gate(x)` exactly 1 for every `x` (see the module docstring)."""
        raise ValueError(f"{type(self).__name__} cannot start as the identity")

    def _spatial_mean(self, x: Tensor) -> Tensor:
        """Mean over the spatial dims, keepdim: (B, C, 1, ...); 0 (an empty sum) for an empty map."""
        spatial = tuple(range(2, 2 + self.dims))
        if not is_tracing(x) and x.shape[2:].numel() == 0:
            return x.sum(spatial, keepdim=True)  # zeros, still attached to x
        return x.mean(spatial, keepdim=True)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises

    def extra_repr(self) -> str:
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return f"channels={self.channels}{dims}"


def zero_(*params: Tensor) -> None:
    """Set parameters to 0 in place, outside autograd."""
    with torch.no_grad():
        for p in params:
            p.zero_()
