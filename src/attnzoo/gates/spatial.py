"""Spatial gate and the full CBAM block (Woo et al., "CBAM", ECCV 2018).

``SpatialAttention`` takes (B, C, H, W) and returns ``x * gate(x)``, the same shape.
Its gate has shape (B, 1, H, W): one weight in (0, 1) per pixel, shared by all
channels (CBAM eq. 3)::

    s = cat([mean over C of x, max over C of x], dim=1)     # (B, 2, H, W)
    gate = sigmoid(conv_kxk(s))                              # padding k // 2

Ranks: ``dims`` (1, 2 or 3, default 2) is the number of spatial dimensions, and the
conv is ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` with the same odd kernel size k
along every spatial dim: (B, C, L) signals take ``dims=1``, (B, C, T, H, W) clips
``dims=3``; unbatched (C, *spatial) inputs are accepted as torch's convs accept them.
One module has one weight, (1, 2) + (k,) * dims, so the rank is fixed when it is built
rather than guessed from each input (a 3-D input could be (B, C, L) or an unbatched
(C, H, W)); ``dims=2`` keeps the original layout, so existing state dicts load as before.

Empty sizes: an empty spatial map gives an empty gate (no conv is run: torch's conv
refuses inputs smaller than its kernel), C = 0 gives descriptors of 0 (the value of an
empty sum), an empty batch an empty result; gradients are zeros, never NaN.

``CBAM`` applies ``channel`` (a ``ChannelAttention``) and then ``spatial`` (a
``SpatialAttention``): ``forward(x) == spatial(channel(x))``, with no residual (in the
paper the residual belongs to the surrounding ResNet block, not to CBAM).

Choices, compared with the paper and the reference code
-------------------------------------------------------
Conv bias, no BatchNorm: we implement eq. 3 literally, a k x k conv with a bias followed
by the sigmoid. The official code uses a conv without bias followed by ``BatchNorm2d``
(timm does the same). We leave BatchNorm out because it makes one sample's gate depend
on the rest of the batch in training, and train and eval outputs differ. In eval mode
that BatchNorm is an affine map ``a * z + b`` of the single conv output, so it folds
exactly into our conv (weight ``a * w``, bias ``b``): the functions one can represent at
inference are the same.

Descriptor order: ``[mean; max]`` as in the paper's ``[AvgPool(F); MaxPool(F)]`` and in
timm. The official code stacks ``[max; mean]``; to load its weights, swap the conv's two
input channels (and fold the BatchNorm as above).

Kernel size must be odd, so that padding ``k // 2`` keeps H and W (the paper uses 7).

Speed: the channel max uses ``x.max(1)``, whose backward scatters into the arg-max; on
CPU it was faster than ``amax``, whose backward splits the gradient among ties using
several full-size ops. ``CBAM.forward`` chains the two gates rather than forming the
(B, C, H, W) product ``gate(x)``, which saves one full-size tensor.
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
from ._act import ScaledSigmoid
from ._base import zero_
from .channel import ChannelAttention

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}

__all__ = ["SpatialAttention", "CBAM"]


def check_odd_kernel_size(name: str, value: object) -> int:
    """A positive odd int, so that padding ``value // 2`` preserves the spatial size."""
    value = check_positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (padding {name} // 2 keeps H, W), got {value}")
    return value


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a k x k conv over channel-wise mean and max maps.

    Input (B, C, H, W), any C -> output (B, C, H, W), equal to ``x * gate(x)``; with
    ``dims=1`` or ``dims=3``, (B, C, L) or (B, C, D, H, W); unbatched (C, ...) too.

    The gate, shape (B, 1, H, W), values in (0, 1)::

        gate = sigmoid(conv(cat([x.mean(1), x.max(1)], dim=1)))

    where ``conv`` maps 2 -> 1 channels with a k x k kernel (k along each of the
    ``dims`` spatial dims), padding k // 2 and a bias.

    Args:
        kernel_size: k, a positive odd int (default 7, as in the paper).
        dims: spatial dimensions of the input, 1, 2 (default) or 3; picks
            ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d``.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            ``torch.autocast``).

    There is no BatchNorm after the conv (the official code has one); see the module
    docstring.
    """

    dims: int = 2  # class default: modules pickled whole before ``dims`` existed still run

    def __init__(
        self,
        kernel_size: int = 7,
        *,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        k = check_odd_kernel_size("kernel_size", kernel_size)
        self.kernel_size = k
        self.dims = check_spatial_dims("dims", dims)
        self.conv = _CONVS[dims](2, 1, k, padding=k // 2, bias=True, device=device, dtype=dtype)
        self.gate_act = nn.Sigmoid()

    def gate(self, x: Tensor) -> Tensor:
        """Per-pixel weights in (0, 1), shape (B, 1, H, W) (or (B, 1, *spatial))."""
        cdim = -self.dims - 1  # the channel dim, batched or not
        if is_tracing(x):  # FX / jit.trace: no checks, no empty-size cases
            empty = False
        else:
            check_feature_map("x", x, self.dims, type(self).__name__)
            check_dtype_matches("x", x, self.conv.weight.dtype, type(self).__name__)
            empty = x.shape[cdim] == 0 or x.shape[-self.dims :].numel() == 0
        if not empty:
            mx = x.max(cdim, keepdim=True).values
            pooled = torch.cat((x.mean(cdim, keepdim=True), mx), dim=cdim)  # (B, 2, H, W)
            return self.gate_act(self.conv(pooled))
        zero = x.sum(cdim, keepdim=True)  # (B, 1, H, W): 0 for C = 0, or empty
        if x.shape[-self.dims :].numel() == 0:  # empty map: an empty gate, zero gradients
            tied = zero + 0 * (self.conv.weight.sum() + self.conv.bias.sum())
            return self.gate_act(tied)
        return self.gate_act(self.conv(torch.cat((zero, zero), dim=cdim)))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x * gate(x)``, the shape of ``x``."""
        return x * self.gate(x)

    def init_identity(self) -> None:
        """Zero ``conv``, use ``2 * sigmoid``: the gate is exactly 1 (``add_attention(init="identity")``)."""
        zero_(self.conv.weight, self.conv.bias)
        self.gate_act = ScaledSigmoid(2.0)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises

    def extra_repr(self) -> str:
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return f"kernel_size={self.kernel_size}{dims}"


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel attention, then spatial attention.

    Input (B, C, H, W) -> output (B, C, H, W) (with ``dims=1``/``dims=3``, (B, C, L) or
    (B, C, D, H, W); unbatched (C, ...) too)::

        y = channel(x)        # x * Mc(x),  Mc: (B, C, 1, 1)
        out = spatial(y)      # y * Ms(y),  Ms: (B, 1, H, W)

    No residual connection. ``gate(x)`` returns the combined factor ``Mc(x) * Ms(y)``,
    shape (B, C, H, W), so that ``forward(x) == x * gate(x)``. The two sigmoids are
    ``channel.gate_act`` and ``spatial.gate_act``.

    Args:
        channels: C, the number of input channels.
        reduction: r for the channel MLP; hidden width ``max(min_hidden, channels // reduction)``.
        kernel_size: k for the spatial conv, a positive odd int (default 7).
        min_hidden: lower bound on the channel MLP's hidden width (default 1).
        dims: spatial dimensions of the input, 1, 2 (default) or 3, for both gates.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must have the same dtype (or run under
            ``torch.autocast``).

    See ``attnzoo.gates.channel`` and this module's docstring for the bias and BatchNorm choices.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        *,
        min_hidden: int = 1,
        dims: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype, "dims": dims}
        self.channel = ChannelAttention(channels, reduction, min_hidden=min_hidden, **kw)
        self.spatial = SpatialAttention(kernel_size, **kw)

    def gate(self, x: Tensor) -> Tensor:
        """Combined multiplicative factor in (0, 1), shape (B, C, H, W)."""
        self.channel._check_input(x, type(self).__name__)
        channel_gate = self.channel.gate(x)
        return channel_gate * self.spatial.gate(x * channel_gate)

    def init_identity(self) -> None:
        """Both parts start as the identity, so the block does."""
        self.channel.init_identity()
        self.spatial.init_identity()

    def forward(self, x: Tensor) -> Tensor:
        """Return ``spatial(channel(x))``, the shape of ``x``."""
        self.channel._check_input(x, type(self).__name__)
        return self.spatial(self.channel(x))

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises
