"""Multi-head attention: self-attention, cross-attention, grouped-query attention.

Shapes with ``batch_first=True`` (the default; ``False`` swaps the first two dims of
inputs and output, as in ``nn.MultiheadAttention``):

    query (B, L, E)   key (B, S, kdim)   value (B, S, vdim)   ->   out (B, L, E)
    weights (B, L, S) averaged over heads, or (B, H, L, S) with average_attn_weights=False

Unbatched inputs ``(L, E)`` work too and give ``(L, E)``. Mask arguments keep
``nn.MultiheadAttention``'s names, shapes and polarity, so existing code can swap modules:

* ``key_padding_mask`` (B, S): bool True = padding, ignored; float = added to the scores.
* ``attn_mask`` (L, S) or (B·H, L, S): bool True = NOT allowed to attend; float = added.
* ``is_causal=True`` hides future keys (query i sees keys 0..i); it may be combined with
  ``attn_mask`` and needs no mask of its own.

(The functional form, `attnzoo.functional.scaled_dot_product_attention`, follows
``F.scaled_dot_product_attention`` instead: True = may attend.)

Differences from ``nn.MultiheadAttention`` (a torch state dict loads silently, so mind
them; `MultiHeadAttention.from_torch` copies the configuration exactly):
``batch_first=True`` by default (torch: False); ``need_weights=False`` by default (torch:
True); ``is_causal=True`` applies a causal mask (torch: a hint that ``attn_mask`` is
causal); fully masked query rows give 0 instead of NaN. The module can serve as
``self_attn``/``multihead_attn`` of torch's Transformer layers (it declines their fused
inference path, whose kernel would bypass it), runs under autocast, supports double
backward, and works with ``torch.fx``, ``torch.jit.trace``, ``torch.export`` and ONNX
export; ``torch.jit.script`` raises one error naming those instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_dropout, check_positive_int
from ._mha_layout import _batch_first_inputs, _combine_masks, _merged_mask, _restore_layout, _sdpa_pair
from ._mha_positions import Positions, check_options, decode_step, positional_attend
from .functional import RowIndex
from ._structured import StructuredMask
from .positions import RelativePositionBias, RotaryEmbedding

is_fx_symbolic_tracing = torch.fx._symbolic_trace.is_fx_symbolic_tracing

__all__ = ["MultiHeadAttention", "SelfAttention", "CrossAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, a drop-in for ``nn.MultiheadAttention``.

    ``num_kv_heads`` < ``num_heads`` gives grouped-query attention (1 = multi-query):
    keys and values get ``num_kv_heads`` heads, each shared by a group of query heads.
    Parameter names equal ``nn.MultiheadAttention``'s (``in_proj_weight`` or
    ``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``), so state dicts load both ways.
    Without ``need_weights`` the output comes from torch's fused attention kernel; with it,
    usually from the weights, a block of query rows at a time (see
    `attnzoo.functional` for when each route is taken).

    Positions (all off by default; see `attnzoo._mha_positions` for the routes):
    `rotary` (a `RotaryEmbedding` with `head_dim = embed_dim // num_heads`) rotates q and k
    at their positions; `alibi=True` adds `m_h (k_pos - q_pos)` with `alibi_slopes(num_heads)`;
    `relative_bias` (a `RelativePositionBias(num_heads)`, a submodule: its table is a parameter
    of this module) adds T5's learned bias. `forward(..., mask=, positions=)` takes a
    structured mask and absolute positions; `decode_step` decodes over a `KVCache` or a
    `RollingKVCache`. They work with `torch.compile` and `torch.export` (tested);
    `torch.fx.symbolic_trace` traces only a module without them.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        num_kv_heads: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        rotary: RotaryEmbedding | None = None,
        alibi: bool = False,
        relative_bias: RelativePositionBias | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.num_kv_heads = check_positive_int("num_kv_heads", num_heads if num_kv_heads is None else num_kv_heads)
        self.kdim = check_positive_int("kdim", embed_dim if kdim is None else kdim)
        self.vdim = check_positive_int("vdim", embed_dim if vdim is None else vdim)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim}, num_heads={num_heads}")
        if num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads must be divisible by num_kv_heads, got num_heads={num_heads}, "
                f"num_kv_heads={self.num_kv_heads}"
            )
        self.dropout = check_dropout("dropout", dropout)
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        check_options(num_heads, self.head_dim, rotary, alibi, relative_bias)
        self.rotary, self.alibi, self.relative_bias = rotary, alibi, relative_bias
        self._positional = rotary is not None or alibi or relative_bias is not None
        self._kv_dim = self.head_dim * self.num_kv_heads
        self._packed = self.kdim == embed_dim and self.vdim == embed_dim  # one in_proj_weight for q, k, v
        # torch's Transformer layers read this flag to choose their fused inference path
        # (torch._transformer_encoder_layer_fwd, nested tensors), which would bypass this
        # module's forward. False makes them decline that path and call forward.
        self._qkv_same_embed_dim = False

        factory = {"device": device, "dtype": dtype}
        rows = embed_dim + 2 * self._kv_dim
        if self._packed:
            self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(self._kv_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(self._kv_dim, self.vdim, **factory))
        self.in_proj_bias = nn.Parameter(torch.empty(rows, **factory)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The same initialisation as ``nn.MultiheadAttention``."""
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """Build an equivalent module (same weights, same outputs) from ``nn.MultiheadAttention``."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None:
            raise ValueError("module uses add_bias_kv=True, which attnzoo.MultiHeadAttention does not support")
        if module.add_zero_attn:
            raise ValueError("module uses add_zero_attn=True, which attnzoo.MultiHeadAttention does not support")
        p = module.out_proj.weight
        new = cls(
            module.embed_dim, module.num_heads, kdim=module.kdim, vdim=module.vdim,
            dropout=module.dropout, bias=module.in_proj_bias is not None,
            batch_first=module.batch_first, device=p.device, dtype=p.dtype,
        )
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every submodule before compiling it.
        raise RuntimeError(
            f"{type(self).__name__} does not support torch.jit.script (TorchScript); use torch.compile, "
            f"torch.export.export or torch.jit.trace instead"
        )

    # ----------------------------------------------------------------------------------
    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        weights_for: RowIndex = None,
        *,
        mask: StructuredMask | None = None,
        positions: Positions = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value`` (``key=None``: self-attention).

        The arguments have ``nn.MultiheadAttention.forward``'s names and positional order
        (query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
        is_causal), so torch's own layers can call this module as their ``self_attn``.
        Differences: ``need_weights`` defaults to False, and ``is_causal=True`` applies a
        causal mask (on top of ``attn_mask``, if given) instead of trusting it as a hint.

        Returns ``(out, weights)``; ``weights`` is None unless ``need_weights`` (under
        ``torch.jit.trace``, which cannot return None, it is an empty tensor instead).
        ``weights_for`` (index tensor, slice or range of query rows) returns only those
        rows' weights, so very long sequences can be inspected cheaply.

        Self-attention projects q, k and v in one GEMM when ``key`` is None or
        ``query is key is value`` (one object: equal values or an alias such as
        ``x.detach()`` may carry other gradients, so they take three GEMMs). FSDP2 with a
        ``MixedPrecisionPolicy(param_dtype=...)`` casts each argument apart, so
        ``mha(x, x, x)`` gets three tensors there: call ``mha(x)`` (or ``SelfAttention``).

        ``mask``: a structured mask (`attnzoo.masks`, True = may attend) at absolute
        positions, combined with the other masks. ``positions``: long `(L,)` for the queries
        (and the keys, when S = L) or a pair `(query (L,), key (S,))`; default `0 .. L-1`,
        `0 .. S-1`. They place RoPE, ALiBi, the T5 bias, ``mask`` and ``is_causal``
        (`k_pos <= q_pos` when given).
        """
        if isinstance(mask, torch.fx.Proxy) or isinstance(positions, torch.fx.Proxy):
            # FX traced this module as the root: every argument is a Proxy; the structured
            # options are Python objects a graph cannot take, so the trace runs without them
            mask = positions = None
        self_attention = key is None or (key is query and (value is None or value is key))
        key = query if key is None else key
        value = key if value is None else value
        try:
            return self._forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                 average_attn_weights, is_causal, weights_for, self_attention, mask, positions)
        except RuntimeError:
            if not is_fx_symbolic_tracing():  # under FX the parameters are symbolic Proxies
                self._check_parameters()  # parameters of mixed dtypes: say so instead
            raise

    def _forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
                 need_weights: bool, attn_mask: Tensor | None, average_attn_weights: bool, is_causal: bool,
                 weights_for: RowIndex, self_attention: bool, structured: StructuredMask | None = None,
                 positions: Positions = None) -> tuple[Tensor, Tensor | None]:
        if isinstance(query, Tensor) and query.is_nested:  # from nn.TransformerEncoder's inference path
            return self._forward_nested(query, key, value, key_padding_mask, need_weights, attn_mask,
                                        average_attn_weights, is_causal)
        dims = (self.embed_dim, self.kdim, self.vdim, self.out_proj.weight.dtype, self.batch_first)
        q_in = query
        query, key, value, key_padding_mask = _batch_first_inputs(query, key, value, key_padding_mask, dims)
        if self_attention:  # keep the identity: self-attention projects q, k, v in one GEMM
            key = value = query

        q, k, v = self.project_qkv(query, key, value)  # (B, H, L, hs), (B, Hkv, S, hs) ×2
        mask = _merged_mask(key_padding_mask, attn_mask, q, k, self.num_heads)  # in q's dtype (autocast)
        if self._positional or structured is not None or positions is not None:
            out, weights = positional_attend(self, q, k, v, mask, structured, positions, is_causal, need_weights,
                                             average_attn_weights, weights_for)
        else:
            out, weights = self.attend(
                q, k, v, mask=mask, is_causal=is_causal, need_weights=need_weights,
                average_attn_weights=average_attn_weights, weights_for=weights_for,
            )
        out, weights = _restore_layout(out, weights, q_in, self.batch_first)
        if weights is None and torch.jit.is_tracing():
            weights = out.new_empty(0)  # a traced graph cannot return None
        return out, weights

    def project_query(self, query: Tensor) -> Tensor:
        """(B, L, E) -> per-head queries (B, H, L, hs)."""
        E = self.embed_dim
        w = self.in_proj_weight[:E] if self._packed else self.q_proj_weight
        return _heads(F.linear(query, w, _rows(self.in_proj_bias, 0, E)), self.num_heads)

    def project_qkv(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head q (B, H, L, hs), k and v (B, Hkv, S, hs); self-attention takes one GEMM."""
        key = query if key is None else key
        value = key if value is None else value
        if self._packed and query is key and key is value:
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)  # (B, L, E + 2·kv)
            if self._kv_dim == self.embed_dim:  # the same views as below, in three ops
                B, L, _ = qkv.shape
                return qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q, k, v = qkv.split([self.embed_dim, self._kv_dim, self._kv_dim], dim=-1)
            return _heads(q, self.num_heads), _heads(k, self.num_kv_heads), _heads(v, self.num_kv_heads)
        return (self.project_query(query), *self.project_kv(key, value))

    def project_kv(self, key: Tensor, value: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, S, kdim), (B, S, vdim) -> per-head keys and values (B, Hkv, S, hs) each.

        Cross-attention can project an encoder memory once and reuse it every step.
        """
        value = key if value is None else value
        if self._packed and value is key:  # one GEMM for both
            E = self.embed_dim
            kv = F.linear(key, self.in_proj_weight[E:], _rows(self.in_proj_bias, E, None))
            k, v = kv.split(self._kv_dim, dim=-1)  # (B, S, kv) ×2
        else:
            E, kv = self.embed_dim, self._kv_dim
            same = self._packed
            wk = self.in_proj_weight[E:E + kv] if same else self.k_proj_weight
            wv = self.in_proj_weight[E + kv:] if same else self.v_proj_weight
            k = F.linear(key, wk, _rows(self.in_proj_bias, E, E + kv))
            v = F.linear(value, wv, _rows(self.in_proj_bias, E + kv, None))
        return _heads(k, self.num_kv_heads), _heads(v, self.num_kv_heads)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        average_attn_weights: bool = True,
        weights_for: RowIndex = None,
        guarded: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention over already projected heads, then the output projection.

        ``q`` (B, H, L, hs), ``k``/``v`` (B, Hkv, S, hs); ``mask`` uses the functional
        polarity (bool True = may attend, float = added) and broadcasts to (B, H, L, S).
        Returns ``(out (B, L, E), weights or None)``. ``guarded=False`` is for callers that
        guarantee finite keys/values wherever ``mask`` hides them and no fully masked query
        row (decoding over caches): it skips the guards for those, a few kernels per call.
        """
        out, weights = _sdpa_pair(
            q, k, v, mask, self.dropout if self.training else 0.0, is_causal, self.num_kv_heads != self.num_heads,
            need_weights, average_attn_weights, weights_for, guarded,
        )
        B, _, L, _ = out.shape
        out = out.transpose(1, 2).reshape(B, L, self.embed_dim)  # (B, L, E)
        return self.out_proj(out), weights

    def decode_step(self, x: Tensor, cache: nn.Module, position: int, *,
                    mask: StructuredMask | None = None) -> Tensor:
        """Causal self-attention of new tokens ``x`` (B, T, E) (batch first) at absolute
        positions ``position .. position+T-1`` over ``cache``; returns (B, T, E).

        ``cache``: a `KVCache` (T tokens at a time, ``position + T <= max_len``) or a
        `RollingKVCache` (one token at a time, constant memory). RoPE rotates q and k at
        their positions before the keys are stored; ALiBi, the T5 bias and ``mask`` are
        evaluated at the cached keys' positions. Stepping through a sequence gives the
        output of ``forward(x, mask=mask, is_causal=True)`` row by row.
        """
        return decode_step(self, x, cache, position, mask)

    def _forward_nested(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
                        need_weights: bool, attn_mask: Tensor | None, average_attn_weights: bool,
                        is_causal: bool) -> tuple[Tensor, None]:
        """Nested (ragged, batch-first) inputs: pad, attend with the padding masked, re-nest.

        ``nn.TransformerEncoder`` hands its layers nested tensors in eval mode when it was
        built around torch's own attention and this module was swapped in afterwards.
        """
        if not self.batch_first or need_weights or key_padding_mask is not None or attn_mask is not None:
            raise ValueError(
                "nested tensor input is supported with batch_first=True and no masks or weights only; "
                "build nn.TransformerEncoder with enable_nested_tensor=False to avoid nested tensors"
            )
        lengths = [t.size(0) for t in query.unbind()]
        padded = [t.to_padded_tensor(0.0) if t.is_nested else t for t in (query, key, value)]  # (B, T, ·)
        S = padded[1].size(1)
        key_lengths = torch.tensor([t.size(0) for t in key.unbind()] if key.is_nested else [S] * len(lengths),
                                   device=padded[1].device)
        pad = torch.arange(S, device=key_lengths.device) >= key_lengths[:, None]  # (B, S) True = padding
        same = key is query
        out, _ = self.forward(padded[0], padded[0] if same else padded[1], padded[0] if same else padded[2],
                              key_padding_mask=pad, is_causal=is_causal)  # (B, L, E)
        return torch.nested.nested_tensor([o[:n] for o, n in zip(out, lengths)]), None

    # ----------------------------------------------------------------------------------
    def _check_parameters(self) -> None:
        """All parameters share one dtype (a bias in another dtype would fail inside F.linear).

        Reads the parameter dicts directly: this runs on every call, and ``Module.__getattr__``
        per name costs more than the small attention calls it guards.
        """
        dtype = self.out_proj.weight.dtype
        for prefix, params in (("", self._parameters), ("out_proj.", self.out_proj._parameters)):
            for name, p in params.items():
                if p is not None and p.dtype != dtype:
                    raise TypeError(
                        f"MultiHeadAttention parameters must share one dtype, got out_proj.weight {dtype} "
                        f"and {prefix}{name} {p.dtype}; convert the module with module.to({dtype})"
                    )

    def combine_masks(self, key_padding_mask: Tensor | None, attn_mask: Tensor | None, B: int, L: int, S: int,
                      dtype: torch.dtype) -> Tensor | None:
        """Check torch-polarity masks and turn them into one mask of functional polarity.

        Returns None, a bool mask (True = may attend) or a float bias, shaped to broadcast
        to (B, H, L, S); this is what `attend` takes as ``mask``.
        """
        return _combine_masks(key_padding_mask, attn_mask, B, L, S, dtype, self.num_heads)


class SelfAttention(MultiHeadAttention):
    """Self-attention: every position of ``x`` (B, L, E) attends to every position of ``x``.

    ``forward(x, ...) == MultiHeadAttention.forward(x, x, x, ...)``; masks as there.
    """

    def __init__(self, embed_dim: int, num_heads: int = 1, **kwargs) -> None:
        super().__init__(embed_dim, num_heads, **kwargs)

    def forward(  # type: ignore[override]
        self, x: Tensor, *, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
        is_causal: bool = False, need_weights: bool = False, average_attn_weights: bool = True,
        weights_for: RowIndex = None, mask: StructuredMask | None = None, positions: Positions = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention over ``x`` (B, L, E) (or (L, B, E) with ``batch_first=False``, or (L, E)).

        ``key_padding_mask`` (B, L): True = padding. ``attn_mask`` (L, L) or (B·H, L, L):
        bool True = NOT allowed, float added. ``is_causal=True`` hides later positions.
        Returns ``(out, weights)``: ``out`` shaped like ``x``; ``weights`` (B, L, L), or
        (B, H, L, L) with ``average_attn_weights=False``, only with ``need_weights=True``
        (else None); ``weights_for`` selects query rows of the weights. ``mask`` and
        ``positions`` as in `MultiHeadAttention.forward`.
        """
        return super().forward(
            x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
            need_weights=need_weights, average_attn_weights=average_attn_weights, weights_for=weights_for,
            mask=mask, positions=positions,
        )


class CrossAttention(MultiHeadAttention):
    """Cross-attention: queries from ``x`` (B, L, E) attend over ``context`` (B, S, context_dim).

    In an encoder-decoder Transformer, ``x`` is the decoder stream and ``context`` the
    encoder's output. ``context_padding_mask`` (B, S): bool True = padding.
    """

    def __init__(self, embed_dim: int, context_dim: int | None = None, num_heads: int = 1, **kwargs) -> None:
        super().__init__(embed_dim, num_heads, kdim=context_dim, vdim=context_dim, **kwargs)

    def forward(  # type: ignore[override]
        self, x: Tensor, context: Tensor, *, context_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None, need_weights: bool = False, average_attn_weights: bool = True,
        weights_for: RowIndex = None, mask: StructuredMask | None = None, positions: Positions = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Queries from ``x`` (B, L, E) attend over ``context`` (B, S, context_dim).

        ``context_padding_mask`` (B, S): True = padding. ``attn_mask`` (L, S) or (B·H, L, S):
        bool True = NOT allowed, float added. Returns ``(out (B, L, E), weights)``;
        ``weights`` (B, L, S), or (B, H, L, S) with ``average_attn_weights=False``, only
        with ``need_weights=True`` (else None); ``weights_for`` selects query rows. ``mask``
        and ``positions`` (a pair: query (L,), context (S,)) as in `MultiHeadAttention.forward`.
        """
        return super().forward(
            x, context, context, key_padding_mask=context_padding_mask, attn_mask=attn_mask,
            need_weights=need_weights, average_attn_weights=average_attn_weights, weights_for=weights_for,
            mask=mask, positions=positions,
        )


def _heads(x: Tensor, n: int) -> Tensor:
    """(B, T, n·hs) -> (B, n, T, hs), a view."""
    B, T, D = x.shape
    return x.view(B, T, n, D // n).transpose(1, 2)


def _rows(bias: Tensor | None, a: int, b: int | None) -> Tensor | None:
    return None if bias is None else bias[a:b]


# torch.fx.symbolic_trace records these as single calls: they branch on shapes and on
# forward's arguments, which are symbolic Proxies while FX traces.
for _name in ("_batch_first_inputs", "_merged_mask", "_restore_layout", "_sdpa_pair"):
    torch.fx.wrap(_name)
