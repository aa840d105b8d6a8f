"""torch's fused kernel made safe for masks, and causal attention combined with a mask.

Shapes: q (*, L, E), k (*, S, E), v (*, S, Ev) -> (*, L, Ev); masks have the functional
polarity (bool True = may attend; float added) and broadcast to (*, L, S). Rows that may
attend to nothing give 0 output and 0 gradient; keys and values no query may see are
zeroed first (`_zero_hidden_keys`), so NaN stored at padding stays out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _weights
from ._fused_autograd import fused_attention

# Above this many mask elements a causal+mask combination is built per query block.
_MASK_ELEMENTS = 1 << 24
# From this many scores on, causal + a tail key padding mask runs per length of valid keys.
_LENGTHS_MIN_ELEMENTS = 1 << 16


def _fused(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, causal: bool,
    scale: float | None, offset: int = 0, guarded: bool = True,
) -> Tensor:
    """torch's fused kernel, made safe for rows that may attend to nothing.

    ``offset`` is the position of the first query row, for a block of a causal sequence
    (only the blocked path passes one, always with a mask).
    """
    if mask is None:
        return fused_attention(q, k, v, None, p, causal, scale)
    mask = _merge_causal(mask, causal, q.size(-2), k.size(-2), offset)
    if not guarded:  # the caller promises no fully masked row
        return fused_attention(q, k, v, mask, p, False, scale)
    mask, empty = _open_empty_rows(mask)
    out = fused_attention(q, k, v, mask, p, False, scale)
    return out.masked_fill(empty, 0.0)  # (*, L, Ev); zero output, zero gradient


def _causal_masked_sdpa(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p: float, scale: float | None
) -> Tensor:
    """Causal + a mask, at about the cost of causal alone.

    A key padding mask that hides only a tail of each sample's keys (shape (B, 1, .., 1, S))
    shortens the keys instead: each group of samples with the same length runs the causal
    kernel on its valid keys with no mask at all. Any other mask on a long sequence runs
    in blocks of query rows, each seeing only the keys up to its last row.
    """
    L, S = q.size(-2), k.size(-2)
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()  # no host sync in a graph
    lengths = _tail_lengths(mask, q) if L * S >= _LENGTHS_MIN_ELEMENTS and not tracing else None
    if lengths is not None:
        return _per_length_causal_sdpa(q, k, v, lengths, p, scale)
    if L * S > _MASK_ELEMENTS:
        return _blocked_causal_sdpa(q, k, v, mask, p, scale)
    return _fused(q, k, v, mask, p, True, scale)


def _tail_lengths(mask: Tensor, q: Tensor) -> list[int] | None:
    """Per-sample numbers of valid keys if ``mask`` only hides a tail of keys, else None.

    Only masks of shape (B or 1, 1, ..., 1, S) qualify: bool (True = may attend), or float
    holding nothing but 0 and -inf. Costs one pass over the mask and one host sync.
    """
    if q.dim() < 3 or mask.dim() != q.dim() or mask.requires_grad or mask.size(-1) == 0 or any(n != 1 for n in mask.shape[1:-1]):
        return None
    allowed = mask.reshape(mask.size(0), mask.size(-1))  # (B or 1, S)
    if allowed.dtype != torch.bool:
        if not ((allowed == 0) | allowed.isneginf()).all():
            return None
        allowed = allowed == 0
    lengths = allowed.sum(dim=-1)  # (B or 1,)
    if not torch.equal(allowed, torch.arange(allowed.size(-1), device=mask.device) < lengths[:, None]):
        return None  # valid keys are not a prefix (left padding, holes): positions would shift
    lengths = lengths.tolist()
    return lengths * q.size(0) if len(lengths) == 1 else lengths


def _per_length_causal_sdpa(
    q: Tensor, k: Tensor, v: Tensor, lengths: list[int], p: float, scale: float | None
) -> Tensor:
    """Causal attention where sample b sees only its first ``lengths[b]`` keys -> (B, *, L, Ev).

    Top-left causal alignment is what makes this exact: query i sees keys 0..min(i, len-1).
    Samples with no valid key get 0, like every fully masked row.
    """
    groups: dict[int, list[int]] = {}
    for b, n in enumerate(lengths):
        groups.setdefault(n, []).append(b)

    def causal(q: Tensor, k: Tensor, v: Tensor, n: int) -> Tensor:  # (b, *, L, Ev)
        if n == 0:  # nothing to attend to: 0, with zero gradients (and no NaN from the values)
            out = F.scaled_dot_product_attention(q, k[..., :1, :], v[..., :1, :], scale=scale)
            return out.masked_fill(torch.ones((), dtype=torch.bool, device=q.device), 0.0)
        return F.scaled_dot_product_attention(q, k[..., :n, :], v[..., :n, :], dropout_p=p, is_causal=True, scale=scale)

    if len(groups) == 1:  # one length for the whole batch: one call
        return causal(q, k, v, next(iter(groups)))
    parts, order = [], []
    for n, samples in groups.items():
        idx = torch.tensor(samples, device=q.device)
        parts.append(causal(q.index_select(0, idx), k.index_select(0, idx), v.index_select(0, idx), n))
        order += samples
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(parts, dim=0).index_select(0, inverse.to(q.device))  # back in sample order


def _blocked_causal_sdpa(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p: float, scale: float | None
) -> Tensor:
    """Causal + mask without an L×S mask: each query block sees only keys up to its end."""
    L, S = q.size(-2), k.size(-2)
    rows = max(1, _weights._BLOCK_ELEMENTS.get(q.device.type, _weights._BLOCK_DEFAULT) // S)
    outs = []
    for r0 in range(0, L, rows):
        r1 = min(L, r0 + rows)
        s1 = min(S, r1)  # keys past the block's last row are causally invisible
        m = mask[..., r0:r1, :s1] if mask.size(-2) > 1 else mask[..., :s1]
        outs.append(_fused(q[..., r0:r1, :], k[..., :s1, :], v[..., :s1, :], m, p, True, scale, r0))
    return torch.cat(outs, dim=-2)


def _merge_causal(mask: Tensor, causal: bool, L: int, S: int, offset: int) -> Tensor:
    """Fold a causal triangle (query rows start at ``offset``) into ``mask``."""
    if not causal:
        return mask
    rows = torch.arange(offset, offset + L, device=mask.device)[:, None]
    later = torch.arange(S, device=mask.device) > rows  # (L, S) True = future key
    if mask.dtype == torch.bool:
        return mask & ~later
    return mask.masked_fill(later, float("-inf"))


def _open_empty_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Give rows that may attend to nothing a harmless mask; return where they were.

    The fused kernel would turn such rows into NaN (or NaN gradients); the caller zeroes
    them afterwards with the returned ``empty`` (shape ``(..., L, 1)``).
    """
    if mask.dtype == torch.bool:
        empty = ~mask.any(dim=-1, keepdim=True)
        return mask | empty, empty
    empty = mask.isneginf().all(dim=-1, keepdim=True)
    return mask.masked_fill(empty, 0.0), empty


def _zero_hidden_keys(key: Tensor, value: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the keys/values that no query may see (a padded key column).

    Their weights are exactly 0, but the fused kernel still multiplies: 0 × NaN = NaN.
    """
    if mask.dtype == torch.bool:
        hidden = ~mask.any(dim=-2)  # (..., S)
    else:
        hidden = mask.isneginf().all(dim=-2)  # (..., S)
    hidden = hidden.unsqueeze(-1)  # (..., S, 1)
    return key.masked_fill(hidden, 0.0), value.masked_fill(hidden, 0.0)
