"""Scaled dot-product attention: the readable formula and the fast path, side by side.

Shapes (any number of leading batch dimensions ``*``; usually ``* = (B, H)``):

    query (*, L, E)    key (*, S, E)    value (*, S, Ev)  ->  out (*, L, Ev)
    weights (*, L, S)  (only with need_weights=True)

Mask polarity is that of `torch.nn.functional.scaled_dot_product_attention`:
a boolean ``attn_mask`` is True where a query MAY attend to a key; a floating-point
``attn_mask`` is added to the scores. The mask must broadcast to ``(*, L, S)``.
``is_causal=True`` lets query ``i`` see keys ``0..i`` (top-left aligned, as torch) and,
unlike torch, may be combined with ``attn_mask``.

Beyond torch:

* ``need_weights=True`` returns ``(out, weights)``. As in torch's own weights path, the
  output is ``weights @ value``, but computed a block of query rows at a time
  (`attnzoo._weights`), so the per-head weights are never all in memory. The output
  stays on torch's fused kernel, and the weights come from a separate pass, where that is
  cheaper or leaner: with autograd above the small-call size (see
  ``attnzoo._weights._SHARED_MAX_SCORES``; the blocks would all be kept for the
  backward), for ``weights_for`` rows, and for head-averaged half-precision weights on a
  GPU (Triton kernels). Inside `fused_output` (the recorder uses it) the output
  always comes from the fused kernel, so asking for weights never changes it.
* A query row that may attend to nothing (all keys masked) gives 0 output, 0 weights
  and finite gradients, on every path, instead of NaN.
* NaN/Inf stored at keys/values that no query may see (padding) never reaches the
  output (torch's kernel lets ``0 × NaN`` through).
* Double backward (``create_graph=True``) works on the fused path, ``torch.func``
  (``vmap``, ``jvp``, ``grad``) and forward-mode AD work, and any size may be 0.

Like torch, the batch dims (all but the last two) of query, key and value broadcast,
right-aligned: ``q (4, 3, 8)`` with ``k, v (4, 4, 6, 8)`` gives ``(4, 4, 3, 8)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor
from torch.jit import is_tracing

from . import _weights
from ._sdpa_checks import _broadcast, _validate  # noqa: F401  (_broadcast: tests)
from ._fused_autograd import math_attention, needs_math, wants_grad
from ._masked import _causal_masked_sdpa, _fused, _zero_hidden_keys
from ._weights import RowIndex, _head_mean, _row_index, attention_weights

if TYPE_CHECKING:
    from ._structured import StructuredMask

ScoreBias = Callable[[Tensor, Tensor], Tensor]

__all__ = ["RowIndex", "attention_reference", "attention_weights", "fused_output", "scaled_dot_product_attention"]

_fused_output_depth = 0  # > 0 inside fused_output()


# --------------------------------------------------------------------------------------
# The formula. Slow and obvious on purpose: the oracle for the tests and the docs.
# --------------------------------------------------------------------------------------
def attention_reference(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    need_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ · scale + mask) V, written as the math (same arguments as the fast path)."""
    _validate(query, key, value, attn_mask, dropout_p, enable_gqa)
    if enable_gqa:  # every group of query heads shares one key/value head
        key = key.repeat_interleave(query.size(-3) // key.size(-3), dim=-3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), dim=-3)
    out, weights = math_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
    return (out, weights) if need_weights else out


# --------------------------------------------------------------------------------------
# The fast path.
# --------------------------------------------------------------------------------------
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    need_weights: bool = False,
    weights_for: RowIndex = None,
    *,
    mask: StructuredMask | None = None,
    score_bias: ScoreBias | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Drop-in for ``F.scaled_dot_product_attention`` that can also return the weights.

    ``weights_for`` (an index tensor, slice or range over the L query rows) restricts the
    returned weights to those rows, shape ``(*, len(rows), S)``, at O(rows × S) memory.
    With ``dropout_p > 0`` and ``need_weights`` the output is computed from the returned
    (dropped-out) weights, so ``out == weights @ value`` still holds.

    ``mask`` (a structured mask from `attnzoo.masks`: `sliding_window`, `sinks`,
    `documents`, `causal`, `mask_mod`, combined with `&`/`|`) and ``score_bias``
    (`score_bias(q_idx (lq, 1), kv_idx (1, lk)) -> (H or 1, lq, lk)` float tile added to
    the scores) run block by block, visiting only the key blocks the mask does not hide
    (`attnzoo.masks.block_attention`): no L×S mask or (H, L, S) bias is ever built. Both
    combine with ``attn_mask``, ``is_causal``, ``enable_gqa`` and the weights arguments;
    the query is then (B, H, L, E), (H, L, E) or (L, E). A ``score_bias`` whose attribute
    `relative` is `True` promises to depend on `kv_idx - q_idx` alone (as
    `attnzoo.alibi_score_bias` and `RelativePositionBias.score_bias()` do): it is then
    evaluated once per distance, not once per block, and windows run batched
    (`attnzoo._band`).
    """
    batch = _validate(query, key, value, attn_mask, dropout_p, enable_gqa)
    if not enable_gqa and not (query.shape[:-2] == key.shape[:-2] == value.shape[:-2]):
        # batch dims broadcast between query, key and value, as in torch
        query = query.expand(*batch, *query.shape[-2:])  # (*, L, E)
        key = key.expand(*batch, *key.shape[-2:])  # (*, S, E)
        value = value.expand(*batch, *value.shape[-2:])  # (*, S, Ev)
    if mask is not None or score_bias is not None:  # structured: block by block (attnzoo._blocksparse)
        from ._blocksparse import check_structured, structured_sdpa

        check_structured(query, mask, score_bias)
        return structured_sdpa(query, key, value, mask, score_bias, attn_mask, dropout_p, is_causal, scale,
                               need_weights, weights_for)
    return sdpa(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
        need_weights=need_weights, weights_for=weights_for,
    )


def sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    need_weights: bool = False,
    average_heads: bool = False,
    weights_for: RowIndex = None,
    guarded: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Unchecked core of `scaled_dot_product_attention` (modules validate first).

    ``average_heads=True`` returns weights averaged over dim -3 (the heads), computed
    block by block so the per-head weights are never all in memory at once.
    ``guarded=False``: the caller guarantees finite keys/values wherever the mask hides
    them and no fully masked query row, so the guards for those are skipped.
    """
    if attn_mask is not None and attn_mask.dim() < 2:  # (S,) or scalar: give it a row dim
        attn_mask = attn_mask.reshape(1, -1)
    # under torch.jit.trace the sizes are traced values: repeat (by 1, a copy) rather than branch on them
    if enable_gqa and query.dim() >= 3 and (is_tracing() or query.size(-3) != key.size(-3)):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, dim=-3)  # (*, H, S, E)
        value = value.repeat_interleave(groups, dim=-3)  # (*, H, S, Ev)
    if attn_mask is not None and guarded:  # keys no query may see: 0, so NaN/Inf stored there stays out
        key, value = _zero_hidden_keys(key, value, attn_mask)

    if needs_math(query, key, value, attn_mask):  # empty sizes, torch.func, forward AD
        out, weights = math_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
        return (out, _select(weights, average_heads, weights_for, query)) if need_weights else out

    if need_weights and dropout_p > 0.0:  # dropout acts on the returned weights, as in torch
        weights = F.dropout(attention_weights(query, key, attn_mask, is_causal, scale), p=dropout_p)  # (*, L, S)
        out = weights @ value  # (*, L, Ev)
        return out, _select(weights, average_heads, weights_for, query)
    if need_weights and _output_from_weights(query, key, value, attn_mask, average_heads, weights_for):
        # torch's weights path, blockwise: each block of weights gives its output rows too
        out, weights = _weights.weights_and_output(
            query, key, value, attn_mask, is_causal, scale, average_heads=average_heads and weights_for is None
        )
        return out, _select(weights, average_heads and weights_for is not None, weights_for, query)

    if attn_mask is not None and is_causal:
        out = _causal_masked_sdpa(query, key, value, attn_mask, dropout_p, scale)
    else:
        out = _fused(query, key, value, attn_mask, dropout_p, is_causal, scale, guarded=guarded)
    if not need_weights:
        return out
    weights = attention_weights(
        query, key, attn_mask, is_causal, scale, average_heads=average_heads, rows=weights_for
    )
    return out, weights


@contextlib.contextmanager
def fused_output() -> Iterator[None]:
    """Inside, ``need_weights=True`` never changes the output (no dropout): the output comes
    from torch's fused kernel, bit-identical to ``need_weights=False``, and the weights from
    a separate pass. `attnzoo.record.AttentionRecorder` records inside it.
    """
    global _fused_output_depth
    _fused_output_depth += 1
    try:
        yield
    finally:
        _fused_output_depth -= 1


def _output_from_weights(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, average: bool,
                         rows: RowIndex) -> bool:
    """Whether need_weights computes the output from the weights it returns (one score pass)
    instead of torch's fused kernel plus a separate weights pass.

    Not inside `fused_output`, nor where the GPU kernels for averaged weights serve
    the call (the fused kernel plus those is faster). Otherwise: small calls always; larger
    ones when no gradient is wanted and all rows are asked for (with autograd the blocks'
    per-head weights would all be kept for the backward).
    """
    if _fused_output_depth or _weights._kernels_serve(query, key, mask, average, rows):
        return False
    return _weights._small(query, key.size(-2)) or (rows is None and not wants_grad(query, key, value, mask))


def _select(weights: Tensor, average: bool, rows: RowIndex, query: Tensor) -> Tensor:
    """Per-head weights (*, L, S) -> the head mean and the chosen rows, as asked."""
    if average:
        weights = _head_mean(weights)  # (*, L, S) without the head dim
    if rows is not None:
        weights = weights[..., _row_index(rows, query.size(-2), query.device), :]
    return weights
