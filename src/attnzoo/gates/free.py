"""SimAM, the parameter-free attention of Yang et al., "SimAM: A Simple, Parameter-Free
Attention Module for Convolutional Neural Networks" (ICML 2021).

`SimAM()(x)` takes a feature map `x` of shape (B, C, *spatial) (or unbatched (C, *spatial))
and returns `x * gate(x)`, the same shape. `gate(x)` has the shape of `x`: one weight in
(0, 1) per element, from the closed-form minimal energy of that neuron among the n + 1
neurons of its channel (paper eq. 6 and its code):

    d = (x - mean)^2                               # per channel, mean over the spatial dims
    var = sum of d over the spatial dims / n       # n = (number of positions) - 1
    inverse energy = d / (4 * (var + lambda)) + 1/2
    gate = sigmoid(inverse energy)

`dims` (1, 2 or 3, default 2) is the number of spatial dimensions, as for the other gates:
(B, C, L) signals take `dims=1`, (B, C, T, H, W) clips `dims=3`; the statistics are taken
over all `dims` spatial dimensions of each channel.

Choices, compared with the paper and the official code
------------------------------------------------------
Variance: the paper's eq. 5 writes the mean over all M neurons (1/M); the official code
divides by n = M - 1 (the unbiased estimate). We follow the code, as the published
results do.

lambda: 1e-4 as in the paper and the official module's default (its ImageNet runs are
logged with 0.1; pass `e_lambda=0.1` to match those).

A single position (M = 1): the code divides 0 by n = 0 and returns NaN everywhere. We take
the variance of a single value to be 0, so the inverse energy is exactly 1/2 and the gate
sigmoid(1/2): finite, with finite gradients. An empty map gives an empty output.

No parameters, so SimAM cannot start as the identity: its gate is never 1. `init_identity()`
raises a `ValueError` saying so (`add_attention(..., init="identity")` relies on it).

This file also holds the input check shared by the gates of `attnzoo.gates.context` and
`attnzoo.gates.kernel` (`check_gate_input`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_dtype_matches, check_feature_map, check_spatial_dims, is_tracing, refuse_torchscript

__all__ = ["SimAM", "check_gate_input", "is_unbatched", "with_spatial_ones"]


def check_gate_input(
    x: Tensor, owner: str, dims: int, channels: int | None = None, dtype: torch.dtype | None = None,
    *, min_size: int = 1,
) -> None:
    """Rank (B, C, *spatial) or (C, *spatial) with `dims` spatial dims, channel count, dtype,
    and (with `min_size` > 0) every spatial size at least `min_size` (convs refuse empty maps).

    Skipped while traced (see `attnzoo._checks.is_tracing`). Errors name `owner`.
    """
    if is_tracing(x):
        return
    cdim = check_feature_map("x", x, dims, owner)
    if channels is not None and x.shape[cdim] != channels:
        raise ValueError(
            f"x must have {channels} channels (dim {cdim}) for this {owner}, got {x.shape[cdim]} (shape {tuple(x.shape)})"
        )
    if dtype is not None:
        check_dtype_matches("x", x, dtype, owner)
    if min(x.shape[-dims:]) < min_size:
        raise ValueError(
            f"x must have spatial sizes of at least {min_size} for {owner}, got shape {tuple(x.shape)}"
        )


def with_spatial_ones(t: Tensor, dims: int) -> Tensor:
    """`t` with `dims` trailing dims of size 1: (B, C) -> (B, C, 1, ...) (traceable: no size reads)."""
    for _ in range(dims):
        t = t.unsqueeze(-1)
    return t


def is_unbatched(x: Tensor, dims: int) -> bool:
    """True for an unbatched (C, *spatial) input (never while traced: traced inputs are batched)."""
    return not is_tracing(x) and x.dim() == dims + 1


class SimAM(nn.Module):
    """SimAM: parameter-free, per-element weights from each neuron's minimal energy.

    Input (B, C, H, W) -> output (B, C, H, W), equal to `x * gate(x)`; with `dims=1` or
    `dims=3`, (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too. Any C.

    Args:
        channels: accepted for the common gate signature (`create_attention("simam", C)`)
            and ignored: SimAM has no parameters.
        e_lambda: lambda, the regulariser of the energy (default 1e-4, as in the paper).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: accepted for the common signature; there are no parameters.
        dtype: accepted for the common signature; there are no parameters.

    The sigmoid is the module `gate_act`, so hooks on it see the gate.
    """

    #: add_attention may put SimAM after an existing layer; it cannot start as the identity.
    retrofit_error: str | None = None

    def __init__(
        self,
        channels: int | None = None,
        e_lambda: float = 1e-4,
        *,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(e_lambda, bool) or not isinstance(e_lambda, (int, float)):
            raise TypeError(f"e_lambda must be a positive float, got {type(e_lambda).__name__}")
        if not e_lambda > 0:
            raise ValueError(f"e_lambda must be a positive float, got {e_lambda}")
        self.e_lambda = float(e_lambda)
        self.dims = check_spatial_dims("dims", dims)
        self.gate_act = nn.Sigmoid()

    def inverse_energy(self, x: Tensor) -> Tensor:
        """1 / e* of every neuron, the shape of `x`; 1/2 plus the squared deviation term."""
        check_gate_input(x, type(self).__name__, self.dims, min_size=0)
        spatial = tuple(range(-self.dims, 0))
        d = (x - x.mean(spatial, keepdim=True)).square()  # (B, C, *spatial)
        n = x.shape[-self.dims :].numel() - 1
        n = n if is_tracing(x) else max(n, 1)  # one position: a variance of 0, not 0/0
        var = d.sum(spatial, keepdim=True) / n  # (B, C, 1, ...)
        return d / (4 * (var + self.e_lambda)) + 0.5

    def gate(self, x: Tensor) -> Tensor:
        """Per-element weights in (0, 1), the shape of `x`."""
        return self.gate_act(self.inverse_energy(x))

    def forward(self, x: Tensor) -> Tensor:
        """Return `x * gate(x)`, the shape of `x`."""
        return x * self.gate(x)

    def init_identity(self) -> None:
        """Always raises: a parameter-free gate cannot be made the identity."""
        raise ValueError(
            "SimAM has no parameters, so it cannot start as the identity (its gate is "
            "sigmoid(energy) >= sigmoid(1/2), never 1); use init='default'"
        )

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises

    def extra_repr(self) -> str:
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return f"e_lambda={self.e_lambda}{dims}"
