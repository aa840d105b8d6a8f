"""Channel gates: Squeeze-and-Excitation (SENet) and CBAM's channel attention.

Both modules take a feature map ``x`` of shape (B, C, H, W) and return ``x * gate(x)``,
the same shape. ``gate(x)`` has shape (B, C, 1, 1): one weight in (0, 1) per sample and
channel, computed from spatially pooled descriptors by a small bottleneck MLP
(C -> hidden -> C) and a final ``nn.Sigmoid`` named ``gate_act``.

Ranks: ``dims`` (1, 2 or 3, default 2) is the number of spatial dimensions, as in
``nn.Conv1d/2d/3d``: the input is (B, C, *spatial) with ``dims`` spatial sizes, or
unbatched (C, *spatial); the gate is (B, C, 1, ...) with ``dims`` ones (or (C, 1, ...)).
So (B, C, L) signals take ``dims=1`` and (B, C, T, H, W) clips ``dims=3``. The rank is a
constructor argument because a 3-D input would otherwise be ambiguous ((B, C, L) or an
unbatched (C, H, W), which torch's 2-D layers accept). ``dims`` changes no parameter: a
state dict loads into any ``dims``.

Empty sizes: with an empty spatial map (H, W, L or D = 0) the pooled descriptors are 0
(the value of an empty sum) instead of the NaN of an empty mean, so the gate stays
finite and the output is the empty ``x * gate``; an empty batch gives an empty result.

* ``SqueezeExcite`` (Hu et al., "Squeeze-and-Excitation Networks", 2018):
  ``gate(x) = sigmoid(fc2(relu(fc1(avgpool(x)))))``.
* ``ChannelAttention`` (Woo et al., "CBAM", 2018, eq. 2):
  ``gate(x) = sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`` with ONE shared ``mlp``.

Choices, compared with the papers and the reference code
--------------------------------------------------------
Hidden width: ``max(min_hidden, channels // reduction)``, with ``min_hidden=1``. Both
papers use C/r units. Floor division reproduces C/r exactly whenever r divides C, which
covers every configuration in both papers (C = 64 ... 2048, r = 16), and never makes the
bottleneck wider than C/r. The clamp stops the hidden layer from ever having 0 units
(channels=3, reduction=16 gives 1); with 0 units the gate would be a constant
sigmoid(bias), whatever the input. (The official CBAM code uses the bare ``C // r``,
which is 0 for C < r. timm rounds C/r to the nearest integer for CBAM, and to a
multiple of 8 for SE, so its widths can differ from ours.)

Bias: both MLP layers have a bias. The SENet equation ``s = sigmoid(W2 relu(W1 z))``
does not write biases, but the reference SENet models have them, and so does the
official CBAM code (``nn.Linear`` in its shared MLP); timm's CBAM leaves them out by
default. Because CBAM sums two outputs of the MLP, the second bias is counted twice,
exactly as in the official code.

Layout: the MLP layers are ``nn.Linear`` applied to the pooled (B, C) vectors: the same
function as the 1x1 convolutions used by timm and torchvision. To load such weights,
reshape each conv weight from (out, in, 1, 1) to (out, in).

Speed: average pooling is ``x.mean`` over the spatial dims. Max pooling uses
``F.adaptive_max_pool{1,2,3}d``.
Its backward sends the gradient to the single arg-max, which on CPU was about 2.5x faster
(forward + backward) than ``amax``, whose backward splits the gradient among ties using
several full-size ops. Both are valid subgradients; without ties they agree. CBAM's
shared MLP runs once, on the avg and max descriptors stacked into 2B rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import (
    check_dtype_matches,
    check_feature_map,
    check_positive_int,
    check_spatial_dims,
    is_tracing,
    refuse_torchscript,
)
from ._act import ScaledSigmoid
from ._base import zero_

__all__ = ["SqueezeExcite", "ChannelAttention", "hidden_width"]


def hidden_width(channels: int, reduction: int, min_hidden: int = 1) -> int:
    """Width of the bottleneck: ``max(min_hidden, channels // reduction)``, never 0."""
    channels = check_positive_int("channels", channels)
    reduction = check_positive_int("reduction", reduction)
    min_hidden = check_positive_int("min_hidden", min_hidden)
    return max(min_hidden, channels // reduction)


class _ChannelGate(nn.Module):
    """Shared parts: argument checks, the C -> hidden -> C MLP and the sigmoid."""

    dims: int = 2  # class default: modules pickled whole before ``dims`` existed still run

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        min_hidden: int = 1,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction, min_hidden)
        self.dims = check_spatial_dims("dims", dims)
        self.channels = channels
        self.reduction = reduction
        self.hidden_channels = hidden
        kw = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(channels, hidden, bias=True, **kw)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, channels, bias=True, **kw)
        self.gate_act = nn.Sigmoid()

    def _check_input(self, x: Tensor, owner: str | None = None) -> None:
        """Rank, channel count and dtype; errors name ``owner`` (default: this class)."""
        if is_tracing(x):  # FX / jit.trace: see attnzoo._checks.is_tracing
            return
        name = owner or type(self).__name__
        cdim = check_feature_map("x", x, self.dims, name)
        if x.shape[cdim] != self.channels:
            hint = ""
            if cdim == 0 and self.dims > 1 and x.shape[1] == self.channels:
                lower = self.dims - 1
                hint = f"; read as unbatched; a batched input with {lower} spatial dims needs dims={lower}"
            raise ValueError(
                f"x must have {self.channels} channels (dim {cdim}) for this {name}, "
                f"got {x.shape[cdim]} (shape {tuple(x.shape)}){hint}"
            )
        check_dtype_matches("x", x, self.fc1.weight.dtype, name)

    def _avg(self, x: Tensor) -> Tensor:
        """Spatial mean, keepdim: (B, C, 1, ...) or (C, 1, ...); 0 for an empty map."""
        spatial = tuple(range(-self.dims, 0))
        if not is_tracing(x) and x.shape[-self.dims :].numel() == 0:
            return x.sum(spatial, keepdim=True)  # zeros, still attached to x
        return x.mean(spatial, keepdim=True)

    def _max(self, x: Tensor) -> Tensor:
        """Spatial max, keepdim: (B, C, 1, ...) or (C, 1, ...); 0 for an empty map."""
        if not is_tracing(x) and x.shape[-self.dims :].numel() == 0:
            return x.sum(tuple(range(-self.dims, 0)), keepdim=True)
        pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[self.dims - 1]
        return pool(x, 1)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises

    def mlp(self, z: Tensor) -> Tensor:
        """The bottleneck MLP on the last dimension: ``fc2(relu(fc1(z)))``."""
        return self.fc2(self.act(self.fc1(z)))

    def gate(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x * gate(x)``, the shape of ``x``."""
        return x * self.gate(x)

    def init_identity(self) -> None:
        """Zero ``fc2``, use ``2 * sigmoid``: the gate is exactly 1 (``add_attention(init="identity")``)."""
        zero_(self.fc2.weight, self.fc2.bias)
        self.gate_act = ScaledSigmoid(2.0)

    def extra_repr(self) -> str:
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return f"channels={self.channels}, reduction={self.reduction}, hidden={self.hidden_channels}{dims}"


class SqueezeExcite(_ChannelGate):
    """Squeeze-and-Excitation block (SENet).

    Input (B, C, H, W) -> output (B, C, H, W), equal to ``x * gate(x)``; with ``dims=1``
    or ``dims=3``, (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too.

    The gate, shape (B, C, 1, 1), values in (0, 1)::

        z = mean of x over H, W                      # squeeze, (B, C)
        gate = sigmoid(fc2(relu(fc1(z))))            # excitation

    Args:
        channels: C, the number of input channels.
        reduction: r; the hidden width is ``max(min_hidden, channels // reduction)``.
        min_hidden: lower bound on the hidden width (default 1, so never 0 units).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            ``torch.autocast``).

    Both linear layers have biases; see the module docstring for why.
    """

    def gate(self, x: Tensor) -> Tensor:
        """Per-channel weights in (0, 1), shape (B, C, 1, 1) (one 1 per spatial dim)."""
        self._check_input(x)
        avg = self._avg(x)  # (B, C, 1, 1) or (C, 1, 1)
        z = avg.flatten(-self.dims - 1)  # (B, C) or (C,)
        return self.gate_act(self.mlp(z).view_as(avg))


class ChannelAttention(_ChannelGate):
    """CBAM channel attention: average- and max-pooled descriptors, one shared MLP.

    Input (B, C, H, W) -> output (B, C, H, W), equal to ``x * gate(x)``; with ``dims=1``
    or ``dims=3``, (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too.

    The gate, shape (B, C, 1, 1), values in (0, 1) (CBAM eq. 2)::

        gate = sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))
        mlp(z) = fc2(relu(fc1(z)))

    The MLP runs once on both descriptors stacked into (2, B, C).

    Args:
        channels: C, the number of input channels.
        reduction: r; the hidden width is ``max(min_hidden, channels // reduction)``.
        min_hidden: lower bound on the hidden width (default 1, so never 0 units).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            ``torch.autocast``).

    The MLP has biases, as in the official CBAM code (timm drops them); since the two
    outputs are summed, ``fc2.bias`` enters twice, as in that code.
    """

    def gate(self, x: Tensor) -> Tensor:
        """Per-channel weights in (0, 1), shape (B, C, 1, 1) (one 1 per spatial dim)."""
        self._check_input(x)
        avg = self._avg(x)  # (B, C, 1, 1) or (C, 1, 1)
        mx = self._max(x)  # same shape
        z = torch.stack((avg.flatten(-self.dims - 1), mx.flatten(-self.dims - 1)))  # (2, B, C)
        logits = self.mlp(z).sum(0)  # (B, C) or (C,)
        return self.gate_act(logits.view_as(avg))
