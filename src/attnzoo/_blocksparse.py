"""Attention under a structured mask, one block of query rows at a time, visiting only
the key blocks the mask does not hide: time and memory O(visible scores), never O(L·S).

Shapes: query (B, H, L, E), key (B, Hk, S, E), value (B, Hk, S, Ev) -> out (B, H, L, Ev)
(Hk divides H with `enable_gqa`; (H, L, E) and (L, E) inputs count as B = 1, H = 1);
weights (B, H, R, S) for R chosen query rows. Mask polarity: True = may attend (the
structured mask and a bool `attn_mask` alike; a float `attn_mask` is added).

For each block of `block_q` query rows the mask's block map (`attnzoo.masks`) names the
key blocks that are not `EMPTY`; the block's visible keys (a slice when contiguous,
gathered otherwise) go to torch's fused kernel, with a small tile built only when some
block is `PARTIAL` (a float tile when a score bias or float mask is given). Consecutive
blocks that see the same keys run as one longer block, and blocks that see equally
spaced spans of keys (a window) are batched into one call over strided views of the keys:
a few kernel calls of at most `_GROUP_SCORES` scores each (`attnzoo._blockrun`). The backward
(`attnzoo._blockgrad`) runs group by group as well, so time and memory stay O(visible
scores). Rows that may attend to nothing give 0 output, 0 weights and zero gradients.

`score_bias(q_idx, kv_idx)` gets long tensors `q_idx (lq, 1)` and `kv_idx (1, lk)` of
absolute positions and returns a finite float `(H or 1, lq, lk)` (or `(lq, lk)`) tile added to
the scores of that block: ALiBi's `-slope * (i - j)` or a T5 relative bias without any
(H, L, S) tensor.

Relative masks and biases (functions of `kv_idx - q_idx` alone: windows, causal, and a
`score_bias` with `relative = True`) take faster routes on CPU (`attnzoo._band`): a window
runs as a few batched calls over views of q, k, v, and a relative bias's tile is a strided
view of one row per head, so long blocks cost no tile memory.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ._blockrun import _Blocks, bias_tile
from ._blockweights import block_weights
from ._masked import _zero_hidden_keys
from ._sdpa_checks import _validate
from ._weights import RowIndex, _row_index
from ._structured import StructuredMask, _All, _as_mask, causal

__all__ = ["block_attention", "bias_tile", "check_structured", "structured_sdpa"]

ScoreBias = Callable[[Tensor, Tensor], Tensor]

# Query rows per block, and key positions per block of the block map. A query block sees
# its visible key blocks in one kernel call, so the span it scores is the visible keys
# rounded out to whole key blocks: smaller key blocks waste less, larger query blocks
# make fewer calls.
_BLOCK_Q = 128
_BLOCK_KV = 64


def block_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: StructuredMask | None = None, *,
    scale: float | None = None, score_bias: ScoreBias | None = None, attn_mask: Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, enable_gqa: bool = False, need_weights: bool = False,
    weights_for: RowIndex = None, average_heads: bool = False, block_q: int = _BLOCK_Q, block_kv: int = _BLOCK_KV,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ · scale + bias + mask) V over the blocks `mask` does not hide.

    `mask` (from `attnzoo.masks`; None = every key) combines with `attn_mask`, `is_causal`
    and `enable_gqa` as in `attnzoo.functional.scaled_dot_product_attention`, which calls
    this for `mask=`/`score_bias=`. Returns `out` or, with `need_weights`, `(out, weights)`
    (exact, dense `(B, H, R, S)`, or head-averaged `(B, R, S)`).
    """
    batch = _validate(query, key, value, attn_mask, dropout_p, enable_gqa)
    if not enable_gqa and not (query.shape[:-2] == key.shape[:-2] == value.shape[:-2]):
        query = query.expand(*batch, *query.shape[-2:])  # (*, L, E)
        key = key.expand(*batch, *key.shape[-2:])  # (*, S, E)
        value = value.expand(*batch, *value.shape[-2:])  # (*, S, Ev)
    check_structured(query, mask, score_bias, block_q, block_kv)
    return structured_sdpa(query, key, value, mask, score_bias, attn_mask, dropout_p, is_causal, scale,
                           need_weights, weights_for, average_heads, block_q, block_kv)


def check_structured(query: Tensor, mask: object, score_bias: object, block_q: int = _BLOCK_Q,
                     block_kv: int = _BLOCK_KV) -> None:
    """The checks of the `mask=`/`score_bias=` arguments (TypeError/ValueError naming them)."""
    if mask is not None:
        _as_mask("mask", mask)
    if score_bias is not None and not callable(score_bias):
        raise TypeError(f"score_bias must be callable as score_bias(q_idx, kv_idx), got {type(score_bias).__name__}")
    if query.dim() > 4:
        raise ValueError(f"with mask= or score_bias=, query must be (B, H, L, E), (H, L, E) or (L, E), "
                         f"got {tuple(query.shape)}")
    for name, n in (("block_q", block_q), ("block_kv", block_kv)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"{name} must be a positive int, got {n!r}")


def structured_sdpa(
    query: Tensor, key: Tensor, value: Tensor, mask: StructuredMask | None, score_bias: ScoreBias | None,
    attn_mask: Tensor | None, dropout_p: float, is_causal: bool, scale: float | None, need_weights: bool,
    weights_for: RowIndex, average_heads: bool = False, block_q: int = _BLOCK_Q, block_kv: int = _BLOCK_KV,
) -> Tensor | tuple[Tensor, Tensor]:
    """Unchecked core of `block_attention` (inputs validated and batch dims broadcast)."""
    lead = query.shape[:-2]  # the caller's batch dims, restored at the end
    q = query.reshape(*(1,) * (4 - query.dim()), *query.shape)  # (B, H, L, E)
    k = key.reshape(*(1,) * (4 - key.dim()), *key.shape)  # (B, Hk, S, E)
    v = value.reshape(*(1,) * (4 - value.dim()), *value.shape)  # (B, Hk, S, Ev)
    if attn_mask is not None:
        attn_mask = attn_mask.reshape(*(1,) * (4 - attn_mask.dim()), *attn_mask.shape)  # (B|1, H|1, L|1, S|1)
    if k.size(1) != q.size(1):  # enable_gqa: every group of query heads shares one key/value head
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)  # (B, H, S, E)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)  # (B, H, S, Ev)
    if attn_mask is not None:  # keys no query may see: 0, so NaN/Inf stored there stays out
        k, v = _zero_hidden_keys(k, v, attn_mask)
    mask = _All() if mask is None else mask
    mask = mask & causal() if is_causal else mask
    run = _Blocks(q, k, v, mask, score_bias, attn_mask, scale, block_q, block_kv)

    if need_weights and dropout_p > 0.0:  # dropout acts on the returned weights, as in torch
        out, weights = block_weights(run, None, dropout_p, average_heads, with_output=True)
        if weights_for is not None:
            weights = weights[..., _row_index(weights_for, run.L, q.device), :]
    else:
        out = run.output(dropout_p)
        weights = block_weights(run, weights_for, 0.0, average_heads, with_output=False)[1] if need_weights else None
    out = out.reshape(*lead, *out.shape[-2:])  # (*, L, Ev)
    if weights is None:
        return out
    w_lead = lead[:-1] if average_heads else lead
    return out, weights.reshape(*w_lead, *weights.shape[-2:])  # (*, R, S)
