"""MultiHeadAttention's input handling: checks, layouts and masks, outside the module.

These functions branch on shapes and on forward's arguments, so `attnzoo.attention`
registers them with ``torch.fx.wrap``: ``torch.fx.symbolic_trace`` records each as one
call instead of failing on symbolic values. Shapes as in `attnzoo.attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_dtype_matches, check_mask_dtype, check_same_device, check_tensor
from .functional import RowIndex, sdpa


def _checking() -> bool:
    """Shape checks run except under ``torch.jit.trace``, where sizes are traced values and
    comparing them would make a Python bool (a ``TracerWarning``); the trace's example
    inputs were checked by the eager call that built the module's users."""
    return not torch.jit.is_tracing()


def _combine_masks(key_padding_mask: Tensor | None, attn_mask: Tensor | None, B: int, L: int, S: int,
                   dtype: torch.dtype, num_heads: int) -> Tensor | None:
    """The mask conversion of `MultiHeadAttention.combine_masks` (shapes given)."""
    masks = []
    if key_padding_mask is not None:
        check_mask_dtype("key_padding_mask", key_padding_mask)
        if _checking() and key_padding_mask.shape != (B, S):
            raise ValueError(f"key_padding_mask must have shape (B, S) = {(B, S)}, got {tuple(key_padding_mask.shape)}")
        masks.append(key_padding_mask.view(B, 1, 1, S))
    if attn_mask is not None:
        check_mask_dtype("attn_mask", attn_mask)
        if attn_mask.dim() == 2 and (not _checking() or attn_mask.shape == (L, S)):
            masks.append(attn_mask)
        elif attn_mask.dim() == 3 and (not _checking() or attn_mask.shape == (B * num_heads, L, S)):
            masks.append(attn_mask.view(B, num_heads, L, S))
        else:
            raise ValueError(
                f"attn_mask must have shape (L, S) = {(L, S)} or (B*num_heads, L, S) = "
                f"{(B * num_heads, L, S)}, got {tuple(attn_mask.shape)}"
            )
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        allowed = ~masks[0]
        return allowed if len(masks) == 1 else allowed & ~masks[1]
    total = None
    for m in masks:  # mixed or float masks: add them as score biases
        bias = m.to(dtype) if m.is_floating_point() else torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        total = bias if total is None else total + bias
    return total


def _batch_first_inputs(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
                        dims: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Check the inputs and bring them to (B, L, E), (B, S, kdim), (B, S, vdim), mask (B, S).

    ``dims`` = (embed_dim, kdim, vdim, parameter dtype, batch_first). Runs as one opaque
    call under FX (see the ``torch.fx.wrap`` below): it branches on shapes.
    """
    embed_dim, kdim, vdim, dtype, batch_first = dims
    key = query if key is None else key  # None only when FX traced this module as the root
    value = key if value is None else value
    query = check_tensor("query", query, ndim=(2, 3))
    key = key if key is query else check_tensor("key", key, ndim=query.dim())
    value = value if value is key else check_tensor("value", value, ndim=query.dim())
    for name, t, dim in (("query", query, embed_dim), ("key", key, kdim), ("value", value, vdim)):
        if name != "query" and t is query and dim == embed_dim:
            continue  # self-attention: checked once
        check_dtype_matches(name, t, dtype, "MultiHeadAttention")
        if _checking() and t.size(-1) != dim:
            arg = {"query": "embed_dim", "key": "kdim", "value": "vdim"}[name]
            raise ValueError(f"{name} must have {arg}={dim} features (last dim), got shape {tuple(t.shape)}")
    if query.dim() == 2:  # unbatched: (L, E) -> (1, L, E)
        if key_padding_mask is not None:
            check_mask_dtype("key_padding_mask", key_padding_mask)
            if _checking() and key_padding_mask.shape != key.shape[:1]:
                raise ValueError(
                    f"key_padding_mask must have shape (S,) = {(key.size(0),)} for unbatched input, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            key_padding_mask = key_padding_mask.unsqueeze(0)  # (1, S)
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    elif not batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    if _checking() and key.shape[:2] != value.shape[:2]:
        raise ValueError(
            f"key and value must have the same batch size and length, got key {tuple(key.shape)} "
            f"and value {tuple(value.shape)}" + ("" if batch_first else " (batch_first=False layout)")
        )
    if _checking() and query.size(0) != key.size(0):
        raise ValueError(f"query and key must have the same batch size, got {query.size(0)} and {key.size(0)}")
    return query, key, value, key_padding_mask


def _sdpa_pair(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, is_causal: bool,
               gqa: bool, need_weights: bool, average: bool, weights_for: RowIndex,
               guarded: bool = True) -> tuple[Tensor, Tensor | None]:
    """`sdpa` that always returns ``(out (B, H, L, hs), weights or None)``."""
    res = sdpa(q, k, v, mask, dropout_p, is_causal, enable_gqa=gqa, need_weights=need_weights,
               average_heads=average, weights_for=weights_for, guarded=guarded)
    return res if need_weights else (res, None)


def _merged_mask(key_padding_mask: Tensor | None, attn_mask: Tensor | None, q: Tensor, k: Tensor,
                 num_heads: int) -> Tensor | None:
    """Torch-polarity masks -> one functional mask in the dtype of ``q`` (B, H, L, hs)."""
    if key_padding_mask is None and attn_mask is None:
        return None
    for name, m in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if isinstance(m, Tensor):  # q is on query's device
            check_same_device(name, m, "query", q)
    return _combine_masks(key_padding_mask, attn_mask, q.size(0), q.size(-2), k.size(-2), q.dtype, num_heads)


def _restore_layout(out: Tensor, weights: Tensor | None, query: Tensor, batch_first: bool
                    ) -> tuple[Tensor, Tensor | None]:
    """(B, L, E) output back to the caller's layout: unbatched (L, E) or (L, B, E)."""
    if query.dim() == 2:
        return out.squeeze(0), None if weights is None else weights.squeeze(0)
    return (out if batch_first else out.transpose(0, 1)), weights
