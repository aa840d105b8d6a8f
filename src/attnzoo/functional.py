"""Scaled dot-product attention: the readable formula and the fast path, side by side.

Shapes (any number of leading batch dimensions ``*``; usually ``* = (B, H)``)::

    query (*, L, E)    key (*, S, E)    value (*, S, Ev)  ->  out (*, L, Ev)
    weights (*, L, S)  (only with need_weights=True)

Mask polarity is that of :func:`torch.nn.functional.scaled_dot_product_attention`:
a boolean ``attn_mask`` is True where a query MAY attend to a key; a floating-point
``attn_mask`` is added to the scores. The mask must broadcast to ``(*, L, S)``.
``is_causal=True`` lets query ``i`` see keys ``0..i`` (top-left aligned, as torch) and,
unlike torch, may be combined with ``attn_mask``.

Beyond torch:

* ``need_weights=True`` returns ``(out, weights)``. Up to ``_SHARED_MAX_SCORES`` scores
  (all batch dims × L × S; per device type) the output is ``weights @ value``, as in torch's own weights
  path; above, the output still comes from torch's fused kernel and the weights are
  computed separately, a block of query rows at a time. Inside :func:`fused_output`
  (the recorder uses it) the output always comes from the fused kernel, so asking for
  weights never changes it.
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
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_dropout, check_mask_dtype, check_tensor
from . import _triton_weights
from ._fused_autograd import fused_attention, math_attention, needs_math

__all__ = ["attention_reference", "attention_weights", "fused_output", "scaled_dot_product_attention"]

# Blocks of the weights pass hold at most this many float32 scores, by device type: a CPU
# block stays near its caches (8 MiB); on a GPU a call up to 128 MiB of scores is one block
# (one launch per step). Other devices get the middle value.
_BLOCK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}
_BLOCK_DEFAULT = 1 << 24
# A GPU call with at least 2^27 scores (N = 4096 with 8 heads) runs in slices of at most
# 1/32 of them: the block's float32 buffers (scores, softmax, head sum) then stay a small
# fraction of the half-precision per-head weights torch materialises. Below that, fewer and
# larger blocks: each block costs launches, and a GPU host is slow to issue them.
_GPU_SLICED_FROM = 1 << 27
_GPU_BLOCK_SLICES = 32
# Above this many mask elements a causal+mask combination is built per query block.
_MASK_ELEMENTS = 1 << 24
# From this many scores on, causal + a tail key padding mask runs per length of valid keys.
_LENGTHS_MIN_ELEMENTS = 1 << 16
# Up to this many scores (by device type), need_weights computes the output from the weights
# it returns: one more matmul on scores already in hand costs less than the fused kernel and
# a second pass. On a GPU that holds up to one weights block (float32 fused kernels are slow).
_SHARED_MAX_SCORES = {"cpu": 1 << 18, "cuda": 1 << 25}
_SHARED_DEFAULT = 1 << 18
_HALF = (torch.float16, torch.bfloat16)
_fused_output_depth = 0  # > 0 inside fused_output()

RowIndex = Tensor | slice | range | None


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
) -> Tensor | tuple[Tensor, Tensor]:
    """Drop-in for ``F.scaled_dot_product_attention`` that can also return the weights.

    ``weights_for`` (an index tensor, slice or range over the L query rows) restricts the
    returned weights to those rows, shape ``(*, len(rows), S)``, at O(rows × S) memory.
    With ``dropout_p > 0`` and ``need_weights`` the output is computed from the returned
    (dropped-out) weights, so ``out == weights @ value`` still holds.
    """
    batch = _validate(query, key, value, attn_mask, dropout_p, enable_gqa)
    if not enable_gqa and not (query.shape[:-2] == key.shape[:-2] == value.shape[:-2]):
        # batch dims broadcast between query, key and value, as in torch
        query = query.expand(*batch, *query.shape[-2:])  # (*, L, E)
        key = key.expand(*batch, *key.shape[-2:])  # (*, S, E)
        value = value.expand(*batch, *value.shape[-2:])  # (*, S, Ev)
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
    """Unchecked core of :func:`scaled_dot_product_attention` (modules validate first).

    ``average_heads=True`` returns weights averaged over dim -3 (the heads), computed
    block by block so the per-head weights are never all in memory at once.
    ``guarded=False``: the caller guarantees finite keys/values wherever the mask hides
    them and no fully masked query row, so the guards for those are skipped.
    """
    if attn_mask is not None and attn_mask.dim() < 2:  # (S,) or scalar: give it a row dim
        attn_mask = attn_mask.reshape(1, -1)
    if enable_gqa and query.dim() >= 3 and query.size(-3) != key.size(-3):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, dim=-3)  # (*, H, S, E)
        value = value.repeat_interleave(groups, dim=-3)  # (*, H, S, Ev)
    if attn_mask is not None and guarded:  # keys no query may see: 0, so NaN/Inf stored there stays out
        key, value = _zero_hidden_keys(key, value, attn_mask)

    if needs_math(query, key, value, attn_mask):  # empty sizes, torch.func, forward AD
        out, weights = math_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
        if not need_weights:
            return out
        if average_heads:
            weights = weights.mean(dim=-3)  # (*, L, S) without the head dim
        if weights_for is not None:
            weights = weights[..., _row_index(weights_for, query.size(-2), query.device), :]
        return out, weights

    if need_weights and (dropout_p > 0.0 or _shares_output(query, key, attn_mask, average_heads, weights_for)):
        # The output from the returned weights, as in torch's weights path: dropout acts on
        # the weights themselves, and at small sizes this is the cheaper route.
        weights = attention_weights(query, key, attn_mask, is_causal, scale)  # (*, L, S)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = weights @ value  # (*, L, Ev)
        if average_heads:
            weights = _head_mean(weights)  # (*, L, S) without the head dim
        if weights_for is not None:
            weights = weights[..., _row_index(weights_for, query.size(-2), query.device), :]
        return out, weights

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
    a separate pass. :class:`attnzoo.record.AttentionRecorder` records inside it.
    """
    global _fused_output_depth
    _fused_output_depth += 1
    try:
        yield
    finally:
        _fused_output_depth -= 1


def _shares_output(query: Tensor, key: Tensor, mask: Tensor | None, average: bool, rows: RowIndex) -> bool:
    """Whether need_weights computes the output as weights @ value (small calls, unless the
    GPU kernels for averaged weights serve the call: the fused kernel plus those is faster)."""
    if _fused_output_depth or _kernels_serve(query, key, mask, average, rows):
        return False
    limit = _SHARED_MAX_SCORES.get(query.device.type, _SHARED_DEFAULT)
    return math.prod(query.shape[:-1]) * key.size(-2) <= limit


def _kernels_serve(query: Tensor, key: Tensor, mask: Tensor | None, average: bool, rows: RowIndex) -> bool:
    """Whether :mod:`attnzoo._triton_weights` computes these head-averaged weights: CUDA
    with Triton installed, all rows, no gradient wanted, not inside torch.compile."""
    return (
        average and rows is None and query.dim() >= 3 and _triton_weights.available(query)
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (query, key, mask)))
        and not torch.compiler.is_compiling()
    )


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
    rows = max(1, _BLOCK_ELEMENTS.get(q.device.type, _BLOCK_DEFAULT) // S)
    outs = []
    for r0 in range(0, L, rows):
        r1 = min(L, r0 + rows)
        s1 = min(S, r1)  # keys past the block's last row are causally invisible
        m = mask[..., r0:r1, :s1] if mask.size(-2) > 1 else mask[..., :s1]
        outs.append(_fused(q[..., r0:r1, :], k[..., :s1, :], v[..., :s1, :], m, p, True, scale, r0))
    return torch.cat(outs, dim=-2)


def attention_weights(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    average_heads: bool = False,
    rows: RowIndex = None,
) -> Tensor:
    """softmax(Q Kᵀ · scale + mask) for the chosen query rows, one block of rows at a time.

    On CUDA with Triton installed, head-averaged weights of all rows without autograd come
    from :mod:`attnzoo._triton_weights` instead: two kernels, no per-head scores stored.

    Returns ``(*, R, S)`` (``R`` = number of chosen rows, all L by default), or
    ``(*without the head dim, R, S)`` with ``average_heads=True``. Fully masked rows are 0.
    Blocks hold at most ``_BLOCK_ELEMENTS[device type]`` scores; a call that fits is one
    block, with no loop. float16/bfloat16 inputs are computed in float32 (scores, softmax,
    head sums), so the weights are finite wherever the float64 formula is; the result has
    the query's dtype.
    """
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if _kernels_serve(query, key, attn_mask, average_heads, rows):  # on a GPU: no per-head scores at all
        try:
            return _triton_weights.head_mean_weights(query, key, attn_mask, is_causal, scale)
        except Exception as exc:  # a Triton or driver that cannot build them: the blocked path, for good
            _triton_weights.disable(exc)
    if attn_mask is None and not is_causal and rows is None and query.dtype not in _HALF and (
        math.prod(query.shape[:-1]) * S <= _SHARED_MAX_SCORES.get(query.device.type, _SHARED_DEFAULT)
    ):  # small and unmasked (how weights are usually looked at): three ops, no blocks
        w = torch.softmax(torch.matmul(query * scale, key.transpose(-2, -1)), dim=-1)  # (*, L, S)
        return _head_mean(w) if average_heads else w
    index = None if rows is None else _row_index(rows, L, query.device)
    acc = torch.float32 if query.dtype in _HALF else query.dtype  # the dtype of the arithmetic
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (query, key, attn_mask))
    mask = attn_mask
    if index is not None:  # the chosen rows, gathered once: (*, R, E) and (*, R or 1, S)
        query = query.index_select(-2, index)
        if mask is not None and mask.size(-2) > 1:
            mask = mask.index_select(-2, index)
    q = query.to(acc) * scale  # (*, R, E): scaled once, contiguous
    kt = key.to(acc).contiguous().transpose(-2, -1)  # (*, E, S): made contiguous once, not per block
    n_rows, batch = q.size(-2), q.shape[:-2]
    heads = batch[-1] if average_heads else 1
    budget = _BLOCK_ELEMENTS.get(q.device.type, _BLOCK_DEFAULT)
    total = math.prod(batch) * n_rows * S  # the call's scores
    if total >= _GPU_SLICED_FROM and q.device.type != "cpu":  # long sequences: a 1/32 slice at a time
        budget = min(budget, total // _GPU_BLOCK_SLICES)
    block = max(1, budget // max(1, math.prod(batch) * S))
    inplace = not grad and q.device.type == "cpu"  # reuse one scores buffer, softmax in place

    def weights(b0: int, b1: int, out: Tensor | None) -> Tensor:  # (*, b1-b0, S) in acc
        scores = torch.matmul(q[..., b0:b1, :], kt, out=out)  # (*, R_blk, S)
        blocked = None  # True where a query may not attend
        if mask is not None:
            m = mask if mask.size(-2) == 1 else mask[..., b0:b1, :]
            if m.dtype != torch.bool:
                scores = scores.add_(m) if inplace else scores + m
            blocked = ~m if m.dtype == torch.bool else m.isneginf()
        if is_causal:
            if index is None:  # query row b0+i sees keys 0..b0+i
                future = torch.ones(b1 - b0, S, dtype=torch.bool, device=q.device).triu_(b0 + 1)
            else:
                future = torch.arange(S, device=q.device) > index[b0:b1, None]  # (R_blk, S)
            blocked = future if blocked is None else blocked | future
        if blocked is None:
            return _softmax_(scores) if inplace else torch.softmax(scores, dim=-1)
        if mask is None:  # causal alone: every row sees key 0, no row is empty
            scores = scores.masked_fill_(blocked, -math.inf) if inplace else scores.masked_fill(blocked, -math.inf)
            return _softmax_(scores) if inplace else torch.softmax(scores, dim=-1)
        empty = blocked.all(dim=-1, keepdim=True)  # (..., R_blk, 1): rows that may attend to nothing
        if inplace:
            w = _softmax_(scores.masked_fill_(blocked, -math.inf).masked_fill_(empty, 0.0))
            return w.masked_fill_(empty, 0.0)
        w = torch.softmax(scores.masked_fill(blocked, -math.inf).masked_fill(empty, 0.0), dim=-1)
        return w.masked_fill(empty, 0.0)  # zero weights, zero gradient

    if n_rows <= block:  # one block: no loop, no buffers
        w = weights(0, n_rows, None)
        return (_head_mean(w) if average_heads else w).to(query.dtype)
    if grad:
        blocks = [weights(b0, min(n_rows, b0 + block), None) for b0 in range(0, n_rows, block)]
        if average_heads:
            blocks = [w.sum(dim=-3) for w in blocks]  # head sums; divided once, at the end
        out = torch.cat(blocks, dim=-2)
        return (out / heads if average_heads else out).to(query.dtype)
    # Without autograd every block reuses one scores buffer and goes straight into one
    # preallocated result: no per-block allocations, no cat.
    res_batch = batch[:-1] if average_heads else batch
    res = q.new_empty(*res_batch, n_rows, S, dtype=query.dtype)
    buffer = q.new_empty(math.prod(batch) * block * S) if inplace else None
    for b0 in range(0, n_rows, block):
        b1 = min(n_rows, b0 + block)
        view = None if buffer is None else buffer[: math.prod(batch) * (b1 - b0) * S].view(*batch, b1 - b0, S)
        w = weights(b0, b1, view)
        res[..., b0:b1, :] = w.sum(dim=-3) if average_heads else w
    return res.div_(heads) if average_heads else res


# --------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------
def _head_mean(w: Tensor) -> Tensor:
    """``w.mean(dim=-3)``: (*, H, L, S) -> (*, L, S), as one small matmul when ``w`` is contiguous.

    A vector of 1/H times the (H, L·S) heads is a third of ``mean``'s time on small CPU
    calls (one kernel, no separate division), and one kernel on a GPU too.
    """
    if not w.is_contiguous() or w.dim() < 3:
        return w.mean(dim=-3)
    *batch, H, L, S = w.shape
    avg = w.new_full((1, H), 1.0 / H)  # (1, H)
    return torch.matmul(avg, w.view(*batch, H, L * S)).view(*batch, L, S)  # (*, 1, L·S) -> (*, L, S)


def _softmax_(x: Tensor) -> Tensor:
    """Softmax over the last dim, written over its input (inference only: autograd needs it).

    torch's own CPU softmax kernel reads each row before writing it, so it may write over
    its input; that is one pass instead of the four of an amax/sub/exp/div chain.
    """
    return torch.ops.aten._softmax.out(x, -1, False, out=x)


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


def _row_index(rows: RowIndex, L: int, device: torch.device) -> Tensor:
    if isinstance(rows, (slice, range)):
        rows = range(L)[rows] if isinstance(rows, slice) else rows
        return torch.arange(rows.start, rows.stop, rows.step, device=device)
    if not isinstance(rows, Tensor) or rows.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"weights_for must be a slice, range or integer index tensor, got {rows!r:.80}"
        )
    rows = rows.to(device=device, dtype=torch.long).reshape(-1)
    if rows.numel() and (rows.min() < -L or rows.max() >= L):
        raise ValueError(f"weights_for indexes query rows 0..{L - 1}, got {rows.tolist()!r:.80}")
    return rows % L


def _validate(
    query: object, key: object, value: object, attn_mask: object, dropout_p: object,
    enable_gqa: bool,
) -> tuple[int, ...]:
    """Check the arguments; return the batch dims the three inputs broadcast to."""
    q = check_tensor("query", query)
    k = check_tensor("key", key)
    v = check_tensor("value", value)
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., length, features), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"query and key must have the same head dim (last dim), got {q.size(-1)} and {k.size(-1)}"
        )
    if k.size(-2) != v.size(-2):
        raise ValueError(
            f"key and value must have the same length (dim -2), got key {tuple(k.shape)} "
            f"and value {tuple(v.shape)}"
        )
    qb, kb, vb = q.shape[:-2], k.shape[:-2], v.shape[:-2]
    if enable_gqa and q.dim() >= 3:
        if not (q.dim() == k.dim() == v.dim()) or kb != vb or qb[:-1] != kb[:-1] or qb[-1] % kb[-1] != 0:
            raise ValueError(
                f"with enable_gqa, query heads (dim -3) must be a multiple of key heads and "
                f"other batch dims equal, got query {tuple(q.shape)}, key {tuple(k.shape)} "
                f"and value {tuple(v.shape)}"
            )
        batch = tuple(qb)
    else:
        batch = _broadcast(qb, kb, vb)  # leading (batch) dims broadcast, right-aligned, as in torch
        if batch is None:
            raise ValueError(
                f"query, key and value batch dims (all but the last two) must broadcast, got query "
                f"{tuple(q.shape)}, key {tuple(k.shape)} and value {tuple(v.shape)}"
            )
    check_dropout("dropout_p", dropout_p)
    if attn_mask is not None:
        check_mask_dtype("attn_mask", attn_mask)
        target = (*batch, q.size(-2), k.size(-2))
        if _broadcast(attn_mask.shape, target) != target:
            raise ValueError(
                f"attn_mask must broadcast to (..., L, S) = {target}, got {tuple(attn_mask.shape)}"
            )
        if attn_mask.is_floating_point() and attn_mask.dtype != q.dtype:
            raise TypeError(f"a float attn_mask must have the query's dtype {q.dtype}, got {attn_mask.dtype}")
    return batch


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The right-aligned broadcast of ``shapes``, or None where they do not broadcast.

    ``torch.broadcast_shapes`` builds tensors to find out, which costs more (tens of µs)
    than the attention call itself on a GPU.
    """
    if all(s == shapes[0] for s in shapes):
        return tuple(shapes[0])
    out = []
    for i in range(1, max(len(s) for s in shapes) + 1):
        sizes = {s[-i] for s in shapes if len(s) >= i} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(reversed(out))
