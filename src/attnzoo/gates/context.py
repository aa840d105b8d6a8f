"""Context blocks: the non-local block and the Global Context (GC) block.

Both take a feature map `x` (B, C, *spatial) with `dims` (1, 2 or 3, default 2) spatial
dims (unbatched (C, *spatial) too; N = number of positions) and return `x` plus a term
built from every position, the same shape. Both are residual: `forward(x) - x` is the
block's own term, so either can replace a map `y` by `block(y)` (`add_attention`).

* `NonLocal` (Wang et al., "Non-local Neural Networks", CVPR 2018), eq. 1 and 6:
  `z = x + BN(W y)`, `y_i = sum_j f(x_i, x_j) g(x_j) / C(x)`, with 1x1 convs
  theta, phi, g to `inter_channels` = C // reduction (C/2 by default). `gate(x)` is the
  (B, N, M) map `f / C(x)` (row i: position i's weights over the M key positions, M = N,
  or the pooled count with `sub_sample`). The pairwise functions (`mode`):
  "embedded_gaussian" softmax_j(theta_i . phi_j); "gaussian" softmax_j(x_i . x_j);
  "dot_product" theta_i . phi_j / M; "concatenation" ReLU(w . [theta_i, phi_j]) / M.
* `GlobalContext` (Cao et al., "GCNet", ICCV Workshops 2019), fig. 4(d): one query-
  independent map `w = softmax over positions of conv_mask(x)` (B, 1, *spatial), context
  `c = sum_j w_j x_j` (B, C), transform `t = fc2(relu(LayerNorm(fc1(c))))`
  (C -> C/r -> C), fusion `x + t` ("add", the paper's default) or `x * sigmoid(t)` ("mul").
  `gate(x)` is the context map w (B, 1, *spatial), the picture to draw; `channel_term(x)`
  is t, shape (B, C, 1, ...).

Memory: the non-local block never holds more than one (N, M) matrix per batch element.
The Gaussian kinds run through attnzoo's attention path (`attnzoo.functional.sdpa`, the core of `scaled_dot_product_attention`) with
scale 1 (the paper's softmax has no 1/sqrt(d)): torch's fused kernel, no (N, M) matrix at
all, and `gate(x)` computes its weights block by block (`attention_weights`). The dot
product is computed as `theta (phi^T g) / M`, by associativity: no (N, M) matrix either.
The concatenation form holds one (B, N, M) matrix (`relu(a.theta_i + b.phi_j)`).

Empty sizes: an empty batch gives an empty result; an empty spatial map is refused with a
`ValueError` (torch's convs refuse it), as is a map that `sub_sample` cannot halve.

Choices, compared with the papers and the official code
-------------------------------------------------------
Non-local: biases on every conv, BatchNorm after W with weight and bias 0 (the block starts
as the identity, the paper's sec. 4.1), as in the official Caffe2 code and its PyTorch port.
`sub_sample` (max pooling by 2 after phi and g; spatial only for `dims=3`, as in that
code) is off by default here and on in that code: off keeps the paper's eq. 1 exactly and
works at any map size (a 1 x 1 map cannot be pooled). `use_scale` multiplies theta . phi by
d^(-1/2): off by default (the paper's formula); the official code's config has it on.
Concatenation: the PyTorch port forms the (B, 2d, N, M) concatenation and projects it; we
use that a 1x1 projection of `[theta_i, phi_j]` is `a . theta_i + b . phi_j` (w = [a; b],
weight `concat_project.weight`, shape (1, 2d), no bias), the same function without
the 2d-fold tensor. The official Caffe2 code has no concatenation form.
GC: as the official code, the mask conv has a bias (softmax ignores it; kept so official
weights load), its weight is Kaiming-normal (fan in), and the last transform layer starts
at 0, so the "add" block starts as the identity. The transform layers are `nn.Linear` on
the pooled (B, C) vector, the same function as the official 1x1 convs (reshape a conv
weight (out, in, 1, 1) to (out, in)); the LayerNorm over the C/r features equals the
official `LayerNorm([C/r, 1, 1])`. Hidden width `max(min_hidden, C // reduction)` as SE
(the official `int(C * ratio)` is the same for ratio 1/r). Only the "att" pooling (the
GC block proper) is provided; "avg" pooling makes it an SE-like block (`SqueezeExcite`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import SPATIAL_NAMES, check_spatial_dims, is_tracing, refuse_torchscript
from ..channel import hidden_width
from ..functional import attention_weights, sdpa
from .free import check_gate_input, is_unbatched, with_spatial_ones

__all__ = ["NonLocal", "GlobalContext", "NONLOCAL_MODES"]

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOLS = {1: lambda: nn.MaxPool1d(2), 2: lambda: nn.MaxPool2d(2), 3: lambda: nn.MaxPool3d((1, 2, 2))}
NONLOCAL_MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


def _gaussian_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, pad: int) -> Tensor:
    """softmax(scale q k^T) v on the fused kernel: (B, N, d), (B, M, d), (B, M, e) -> (B, N, e).

    The fused kernels want (B, H, N, d) and, on CPU, as many value as key features (the
    "gaussian" kind has d = C > e): v is padded with `pad` = d - e zeros. No (N, M) matrix.
    """
    attend = F.scaled_dot_product_attention if torch.jit.is_tracing() else sdpa  # traced: no size checks
    if pad == 0:
        return attend(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]  # (B, N, e)
    return attend(q[:, None], k[:, None], F.pad(v, (0, pad))[:, None], scale=scale)[:, 0, :, :-pad]  # (B, N, e)


torch.fx.wrap("_gaussian_attention")  # FX records one call: attnzoo's sdpa branches on sizes


class NonLocal(nn.Module):
    """Non-local block: every position attends to every position; residual, BN-gated.

    Input (B, C, *spatial) -> output the same shape, `x + BN(W y)`; unbatched (C, ...) too.

    Args:
        channels: C.
        reduction: `inter_channels = max(1, C // reduction)` (default 2: C/2, the paper's).
        mode: "embedded_gaussian" (default), "gaussian", "dot_product" or "concatenation".
        sub_sample: max-pool phi and g by 2 (spatial only when `dims=3`); default off.
        norm: BatchNorm after W, initialised to 0 (default); without it W starts at 0.
        use_scale: multiply theta . phi by d^(-1/2) (the official config's default); off.
        dims: spatial dimensions, 1 (sequences), 2 (images, default) or 3 (video).
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must share it (or run under `torch.autocast`).
    """

    retrofit_error: str | None = None  # add_attention may put it after an existing layer
    forward_calls_gate = False  # forward never forms the map: a recorder calls gate(x) (attnzoo.maps.hooks)
    gate_kind = "gate"  # recorded as (B, N, M), whatever the shapes

    def __init__(self, channels: int, reduction: int = 2, *, mode: str = "embedded_gaussian",
                 sub_sample: bool = False, norm: bool = True, use_scale: bool = False, dims: int = 2,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        inter = hidden_width(channels, reduction)
        if mode not in NONLOCAL_MODES:
            raise ValueError(f"mode must be one of {NONLOCAL_MODES}, got {mode!r}")
        self.dims = check_spatial_dims("dims", dims)
        self.channels, self.reduction, self.inter_channels, self.mode = channels, reduction, inter, mode
        self.use_scale, self.sub_sample = bool(use_scale), bool(sub_sample)
        conv, kw = _CONVS[dims], {"device": device, "dtype": dtype}
        embedded = mode != "gaussian"
        self.theta = conv(channels, inter, 1, **kw) if embedded else None
        self.phi = conv(channels, inter, 1, **kw) if embedded else None
        self.g = conv(channels, inter, 1, **kw)
        self.concat_project = nn.Linear(2 * inter, 1, bias=False, **kw) if mode == "concatenation" else None
        self.pool = _POOLS[dims]() if sub_sample else None
        self.W = conv(inter, channels, 1, **kw)
        self.bn = _NORMS[dims](channels, **kw) if norm else None
        self.init_identity()

    def init_identity(self) -> None:
        """Zero the BatchNorm's weight and bias (or W without it): `forward(x) == x` exactly."""
        last = self.bn if self.bn is not None else self.W
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()

    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (B, N, d), keys (B, M, d), values (B, M, inter) of a batched x."""
        q = x if self.theta is None else self.theta(x)  # (B, d, *spatial)
        k = x if self.phi is None else self.phi(x)
        v = self.g(x)  # (B, inter, *spatial)
        if self.pool is not None:
            k, v = self.pool(k), self.pool(v)  # (B, d, *pooled)
        # last dim contiguous: torch's fused CPU kernel needs it (else it falls back to the math path)
        return tuple(t.flatten(2).transpose(1, 2).contiguous() for t in (q, k, v))  # (B, N | M, d)

    @staticmethod
    def _keys(k: Tensor) -> int:
        """M, the normaliser of the non-Gaussian kinds (at least 1, so the division is safe)."""
        return k.size(1) if is_tracing(k) else max(k.size(1), 1)

    def _features(self) -> int:
        """d, the features of theta and phi: C for "gaussian" (x itself), else inter_channels."""
        return self.channels if self.theta is None else self.inter_channels

    def _scale(self) -> float:
        return self._features() ** -0.5 if self.use_scale else 1.0

    def _concat_scores(self, q: Tensor, k: Tensor) -> Tensor:
        """relu(a . theta_i + b . phi_j), (B, N, M): the one (N, M) matrix of this mode."""
        w = self.concat_project.weight.view(2, -1)  # (1, 2d) -> (2, d): [a; b]
        a, b = w[0], w[1]  # (d,), (d,)
        s, t = (q @ a).unsqueeze(-1), (k @ b).unsqueeze(1)  # (B, N, 1), (B, 1, M)
        return (s + t).relu_()  # (B, N, M), in place: one matrix

    def _check(self, x: Tensor) -> tuple[Tensor, bool]:
        check_gate_input(x, type(self).__name__, self.dims, self.channels, self.g.weight.dtype)
        pooled = x.shape[-min(self.dims, 2) :]  # the dims sub-sampling halves (not time)
        if self.sub_sample and not is_tracing(x) and min(pooled) < 2:
            raise ValueError(f"x must have at least 2 positions along each pooled dim ({SPATIAL_NAMES[min(self.dims, 2)]}) "
                             f"for NonLocal(sub_sample=True), got shape {tuple(x.shape)}")
        unbatched = is_unbatched(x, self.dims)
        return (x.unsqueeze(0) if unbatched else x), unbatched

    def gate(self, x: Tensor) -> Tensor:
        """The normalised pairwise map f / C(x), (B, N, M) ((N, M) unbatched); rows sum to 1
        for the Gaussian kinds. Row i reshaped to the (pooled) spatial shape is position i's map."""
        xb, unbatched = self._check(x)
        q, k, _ = self._embed(xb)
        if self.mode in ("embedded_gaussian", "gaussian"):
            w = attention_weights(q, k, scale=self._scale())  # (B, N, M), block by block
        elif self.mode == "dot_product":
            w = q @ k.transpose(1, 2) * (self._scale() / self._keys(k))  # (B, N, M)
        else:
            w = self._concat_scores(q, k) / self._keys(k)
        return w.squeeze(0) if unbatched else w

    def forward(self, x: Tensor) -> Tensor:
        """Return `x + BN(W y)`, the shape of `x`."""
        xb, unbatched = self._check(x)
        q, k, v = self._embed(xb)
        m = self._keys(k)
        if self.mode in ("embedded_gaussian", "gaussian"):
            y = _gaussian_attention(q, k, v, self._scale(), self._features() - self.inter_channels)  # (B, N, inter)
        elif self.mode == "dot_product":
            y = q @ (k.transpose(1, 2) @ v) * (self._scale() / m)  # (B, N, d) @ (B, d, inter)
        else:
            y = self._concat_scores(q, k) @ v / m  # (B, N, inter)
        y = y.transpose(1, 2).unflatten(2, xb.shape[2:])  # (B, inter, *spatial)
        z = self.W(y)
        z = xb + (z if self.bn is None else self.bn(z))
        return z.squeeze(0) if unbatched else z

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)}" for k in ("sub_sample", "use_scale") if getattr(self, k))
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return f"channels={self.channels}, inter_channels={self.inter_channels}, mode={self.mode!r}{extra}{dims}"


class SpatialSoftmax(nn.Module):
    """Softmax over all `dims` spatial positions of a (B, 1, *spatial) map, the same shape."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, logits: Tensor) -> Tensor:
        return F.softmax(logits.flatten(-self.dims), dim=-1).view_as(logits)  # (B, 1, N) -> (B, 1, *spatial)


class GlobalContext(nn.Module):
    """Global Context block: softmax attention pooling, a bottleneck transform, fusion.

    Input (B, C, *spatial) -> output the same shape: `x + t` ("add") or
    `x * sigmoid(t)` ("mul"), t = `channel_term(x)` (B, C, 1, ...); unbatched (C, ...) too.

    Args:
        channels: C.
        reduction: r; the hidden width is `max(min_hidden, C // r)` (default 16: the paper's 1/16).
        fusion: "add" (default, the paper's) or "mul".
        min_hidden: lower bound on the hidden width (default 1).
        dims: spatial dimensions of the input, 1, 2 (default) or 3.
        device: where the parameters live.
        dtype: the parameters' dtype; inputs must share it (or run under `torch.autocast`).

    The context softmax is the module `gate_act` (output (B, 1, *spatial)), so hooks on it
    see the map that `gate(x)` returns.
    """

    retrofit_error: str | None = None  # add_attention may put it after an existing layer

    def __init__(self, channels: int, reduction: int = 16, *, fusion: str = "add", min_hidden: int = 1,
                 dims: int = 2, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction, min_hidden)
        if fusion not in ("add", "mul"):
            raise ValueError(f"fusion must be 'add' or 'mul', got {fusion!r}")
        self.dims = check_spatial_dims("dims", dims)
        self.channels, self.reduction, self.hidden_channels, self.fusion = channels, reduction, hidden, fusion
        kw = {"device": device, "dtype": dtype}
        self.conv_mask = _CONVS[dims](channels, 1, 1, **kw)
        self.gate_act = SpatialSoftmax(dims)
        self.fc1 = nn.Linear(channels, hidden, **kw)
        self.norm = nn.LayerNorm(hidden, **kw)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, channels, **kw)
        self.mul_scale = 1.0  # "mul": x * mul_scale * sigmoid(t); init_identity sets 2
        with torch.no_grad():
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            self.conv_mask.bias.zero_()
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()

    def init_identity(self) -> None:
        """`forward(x) == x` exactly: t = 0 ("add"), or 2 * sigmoid(0) = 1 ("mul")."""
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()
        if self.fusion == "mul":
            self.mul_scale = 2.0

    def gate(self, x: Tensor) -> Tensor:
        """The context weights, (B, 1, *spatial), summing to 1 over the positions."""
        check_gate_input(x, type(self).__name__, self.dims, self.channels, self.fc1.weight.dtype)
        return self.gate_act(self.conv_mask(x))

    def channel_term(self, x: Tensor) -> Tensor:
        """t = transform(context), (B, C, 1, ...) ((C, 1, ...) unbatched)."""
        w = self.gate(x)  # (B, 1, *spatial)
        context = (x.flatten(-self.dims) @ w.flatten(-self.dims).transpose(-1, -2)).squeeze(-1)  # (B, C, N) @ (B, N, 1) -> (B, C)
        t = self.fc2(self.act(self.norm(self.fc1(context))))  # (B, C)
        return with_spatial_ones(t, self.dims)  # (B, C, 1, ...)

    def forward(self, x: Tensor) -> Tensor:
        """Return `x + t` ("add") or `x * mul_scale * sigmoid(t)` ("mul"), the shape of `x`."""
        t = self.channel_term(x)
        return x + t if self.fusion == "add" else x * (self.mul_scale * torch.sigmoid(t))

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript(type(self).__name__)
        return self  # pragma: no cover - refuse_torchscript always raises

    def extra_repr(self) -> str:
        dims = f", dims={self.dims}" if self.dims != 2 else ""
        return f"channels={self.channels}, reduction={self.reduction}, hidden={self.hidden_channels}, fusion={self.fusion!r}{dims}"
