"""MultiHeadAttention with positions: rotary embeddings, ALiBi, T5 bias and structured masks.

Shapes as in `attnzoo.attention`: q `(B, H, L, hs)`, k/v `(B, Hkv, S, hs)`; positions are
long `(L,)` for the queries and `(S,)` for the keys (default `0 .. L-1`, `0 .. S-1`).
Polarity: a structured mask (`attnzoo.masks`) is True where a query MAY attend; ALiBi
(`slope_h (k_pos - q_pos)`) and the T5 bias are added to `Q Kᵀ / √hs` before the softmax.

Two routes. With default positions, eager, and a structured mask or a bias, attention runs
block by block (`attnzoo._blocksparse`): no `(L, S)` mask or `(H, L, S)` bias is built and
hidden key blocks are skipped. With explicit positions, under `torch.compile` /
`torch.export` / tracing, or when decoding, the mask and bias are evaluated densely at the
given positions and handed to the module's `attend` as one float (or bool) mask.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._blocksparse import check_structured, structured_sdpa
from ._structured import StructuredMask, _as_mask
from .positions import RelativePositionBias, RotaryEmbedding, _check_positions, alibi_bias, alibi_score_bias
from .positions import alibi_slopes as _slopes

Positions = Tensor | tuple[Tensor, Tensor] | None


def check_options(num_heads: int, head_dim: int, rotary: object, alibi: object, relative_bias: object) -> None:
    """The constructor checks of `rotary=`, `alibi=` and `relative_bias=`."""
    if rotary is not None:
        if not isinstance(rotary, RotaryEmbedding):
            raise TypeError(f"rotary must be an attnzoo.RotaryEmbedding or None, got {type(rotary).__name__}")
        if rotary.head_dim != head_dim:
            raise ValueError(f"rotary must have head_dim = embed_dim // num_heads = {head_dim}, "
                             f"got RotaryEmbedding(head_dim={rotary.head_dim})")
    if not isinstance(alibi, bool):
        raise TypeError(f"alibi must be a bool, got {type(alibi).__name__}")
    if relative_bias is not None:
        if not isinstance(relative_bias, RelativePositionBias):
            raise TypeError(f"relative_bias must be an attnzoo.RelativePositionBias or None, "
                            f"got {type(relative_bias).__name__}")
        if relative_bias.num_heads != num_heads:
            raise ValueError(f"relative_bias must have num_heads = {num_heads}, got {relative_bias.num_heads}")


def _tracing(q: Tensor) -> bool:
    return isinstance(q, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling()


def _positions(positions: Positions, L: int, S: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Query positions (L,) and key positions (S,) on `device`, checked."""
    if positions is None:
        return torch.arange(L, device=device), torch.arange(S, device=device)
    if isinstance(positions, tuple) and len(positions) == 2:
        qpos = _check_positions("positions[0] (query positions)", positions[0], L, ndim=(1,))
        kpos = _check_positions("positions[1] (key positions)", positions[1], S, ndim=(1,))
        return qpos.to(device), kpos.to(device)
    if isinstance(positions, tuple):
        raise ValueError(f"positions must be a tensor (L,) or a pair (query (L,), key (S,)), "
                         f"got a tuple of {len(positions)}")
    qpos = _check_positions("positions", positions, L, ndim=(1,))
    if S != L:
        raise ValueError(f"positions (L,) serves queries and keys of the same length; with L={L} queries "
                         f"and S={S} keys pass positions=(query positions (L,), key positions (S,))")
    return qpos.to(device), qpos.to(device)


def _bias(mha, qpos: Tensor, kpos: Tensor, dtype: torch.dtype) -> Tensor | None:
    """The additive position bias (H, Lq, Lk) at these positions, or None."""
    bias = None
    if mha.alibi:
        bias = alibi_bias(_slopes(mha.num_heads, dtype=dtype, device=qpos.device), qpos, kpos)  # (H, Lq, Lk)
    if mha.relative_bias is not None:
        rel = mha.relative_bias(qpos, kpos).to(dtype)  # (H, Lq, Lk)
        bias = rel if bias is None else bias + rel
    return bias


def dense_mask(mha, B: int, qpos: Tensor, kpos: Tensor, mask: StructuredMask | None, causal: bool,
               merged: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Everything that hides or biases scores, as one functional mask broadcasting to
    (B, H, L, S): bool (True = may attend) or float (added), or None."""
    L, S = qpos.numel(), kpos.numel()
    allowed = None
    if mask is not None:
        mask._check(L, S, B)
        b = torch.arange(B, device=qpos.device).view(B, 1, 1, 1)  # (B, 1, 1, 1)
        h = torch.arange(mha.num_heads, device=qpos.device).view(1, -1, 1, 1)  # (1, H, 1, 1)
        allowed = mask(b, h, qpos.view(1, 1, L, 1), kpos.view(1, 1, 1, S))  # (B|1, H|1, L|1, S|1)
    if causal:
        before = kpos.view(1, S) <= qpos.view(L, 1)  # (L, S)
        allowed = before if allowed is None else allowed & before
    extra = _bias(mha, qpos, kpos, dtype)  # (H, L, S)
    if merged is not None:
        if merged.dtype == torch.bool:
            allowed = merged if allowed is None else allowed & merged
        else:
            extra = merged if extra is None else extra + merged
    if extra is None:
        return allowed
    return extra if allowed is None else extra.masked_fill(~allowed, -math.inf)


def positional_attend(mha, q: Tensor, k: Tensor, v: Tensor, merged: Tensor | None, mask: StructuredMask | None,
                      positions: Positions, is_causal: bool, need_weights: bool, average: bool,
                      weights_for) -> tuple[Tensor, Tensor | None]:
    """Attention of projected heads with the module's positions and `mask` -> (out (B, L, E), weights)."""
    if mask is not None:
        _as_mask("mask", mask)
    B, L, S = q.size(0), q.size(-2), k.size(-2)
    tracing = _tracing(q)
    qpos, kpos = _positions(positions, L, S, q.device)
    if mha.rotary is not None:
        if positions is None and L == S:
            q, k = mha.rotary(q, k, qpos)  # one table for both
        else:
            q, k = mha.rotary.rotate(q, qpos), mha.rotary.rotate(k, kpos)
    biased = mha.alibi or mha.relative_bias is not None
    if positions is None and not tracing and (mask is not None or biased):  # block by block
        bias = None
        if mha.alibi:
            bias = alibi_score_bias(_slopes(mha.num_heads, dtype=q.dtype, device=q.device))
        if mha.relative_bias is not None:
            rel = mha.relative_bias.score_bias()
            bias = rel if bias is None else _sum(bias, rel)
        check_structured(q, mask, bias)
        if k.size(1) != q.size(1):  # grouped keys: one head per query head
            k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)  # (B, H, S, hs)
            v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)  # (B, H, S, hs)
        res = structured_sdpa(q, k, v, mask, bias, merged, mha.dropout if mha.training else 0.0, is_causal, None,
                              need_weights, weights_for, average)
        out, weights = res if need_weights else (res, None)
        out = out.transpose(1, 2).reshape(B, L, mha.embed_dim)  # (B, L, E)
        return mha.out_proj(out), weights
    if positions is None and not tracing and mask is None:  # rotary alone: the plain route
        return mha.attend(q, k, v, mask=merged, is_causal=is_causal, need_weights=need_weights,
                          average_attn_weights=average, weights_for=weights_for)
    full = dense_mask(mha, B, qpos, kpos, mask, is_causal, merged, q.dtype)
    return mha.attend(q, k, v, mask=full, need_weights=need_weights, average_attn_weights=average,
                      weights_for=weights_for)


def _sum(a, b):
    def bias(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return a(q_idx, kv_idx) + b(q_idx, kv_idx)  # (H, lq, lk)

    bias.relative = getattr(a, "relative", False) is True and getattr(b, "relative", False) is True
    return bias


def decode_step(mha, x: Tensor, cache, position: int, mask: StructuredMask | None) -> Tensor:
    """`MultiHeadAttention.decode_step`: causal self-attention of `x` (B, T, E) at absolute
    positions `position .. position+T-1` over `cache` (a `KVCache`, or a `RollingKVCache`
    with T = 1) -> (B, T, E)."""
    from .kvcache import KVCache
    from .rolling_cache import RollingKVCache

    if mask is not None:
        _as_mask("mask", mask)
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position must be an int (the absolute position of x's first token), "
                        f"got {type(position).__name__}")
    if position < 0:
        raise ValueError(f"position must be >= 0, got {position}")
    if x.dim() != 3 or x.size(-1) != mha.embed_dim:
        raise ValueError(f"x must be (B, T, E) with E = {mha.embed_dim} (batch first), got {tuple(x.shape)}")
    T = x.size(1)
    q, k, v = mha.project_qkv(x)  # (B, H, T, hs), (B, Hkv, T, hs) ×2
    qpos = torch.arange(position, position + T, device=x.device)  # (T,)
    if mha.rotary is not None:  # the cache keeps rotated keys
        q, k = mha.rotary(q, k, qpos)
    if isinstance(cache, RollingKVCache):
        if T != 1:
            raise ValueError(f"x must hold one token (B, 1, E) with a RollingKVCache, got {tuple(x.shape)}")
        old = cache.evicts(position)
        if old is not None and not torch.jit.is_tracing():
            hides = mask is not None and not bool(mask(*_index(old, position, x.device)).any())
            if not hides:
                under = repr(mask) if mask is not None else "plain causal attention (mask=None)"
                raise ValueError(
                    f"cache is too small for mask: position {position} overwrites position {old}, which the query "
                    f"still sees under {under}; use window >= left + 1 (and sinks >= the mask's sinks)")
        keys, values, kpos = cache.update(position, k, v)  # (B, Hkv, slots, hs) ×2, (slots,)
        written = (kpos >= 0).view(1, -1)  # (1, slots)
    elif isinstance(cache, KVCache):
        if position + T > cache.max_len:
            raise ValueError(f"position must leave room in the cache: positions {position}..{position + T - 1} "
                             f"exceed the cache's max_len={cache.max_len}")
        keys, values = cache.update(position, k, v)  # (B, Hkv, position+T, hs) ×2
        kpos, written = torch.arange(position + T, device=x.device), None
    else:
        raise TypeError(f"cache must be an attnzoo.KVCache or RollingKVCache, got {type(cache).__name__}")
    full = dense_mask(mha, x.size(0), qpos, kpos, mask, True, written, q.dtype)
    return mha.attend(q, keys, values, mask=full)[0]


def _index(old: int, position: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index tensors (b, h, q_idx, kv_idx) of the one pair (query `position`, key `old`)."""
    z = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    return z, z, z + position, z + old
