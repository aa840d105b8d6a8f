"""The attention weights, softmax(Q Kᵀ · scale + mask), computed without holding them all.

Shapes: query (*, L, E), key (*, S, E) -> weights (*, R, S) for R chosen query rows (all
L by default), or (*without the head dim, R, S) averaged over the heads (dim -3). Masks
have the functional polarity (bool True = may attend; float added) and broadcast to
(*, L, S); ``is_causal`` is top-left aligned. Rows with nothing to attend to are 0.

The routes, by size and device:

* small and unmasked: three ops (matmul, softmax, optional head mean);
* CUDA with Triton, half precision, head-averaged, all rows, no autograd: the two kernels
  of `attnzoo._triton_weights` (no per-head scores stored);
* otherwise blocks of query rows sized from a per-device budget, heads summed per block.

`weights_and_output` also returns ``weights @ value`` (*, L, Ev) from the same
blocks: the output of attention with a single score pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _triton_weights
from ._fused_autograd import wants_grad

__all__ = ["RowIndex", "attention_weights", "weights_and_output"]

RowIndex = Tensor | slice | range | None

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
# Up to this many scores (by device type), need_weights computes the output from the weights
# it returns (attnzoo.functional.sdpa) even with autograd: one more matmul on scores already
# in hand costs less than the fused kernel and a second pass. (Without autograd it does so
# at any size, block by block.) Unmasked calls this small also take the few-op route here.
_SHARED_MAX_SCORES = {"cpu": 1 << 18, "cuda": 1 << 25}
_SHARED_DEFAULT = 1 << 18
_HALF = (torch.float16, torch.bfloat16)


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
    from `attnzoo._triton_weights` instead: two kernels, no per-head scores stored.

    Returns ``(*, R, S)`` (``R`` = number of chosen rows, all L by default), or
    ``(*without the head dim, R, S)`` with ``average_heads=True``. Fully masked rows are 0.
    Blocks hold at most ``_BLOCK_ELEMENTS[device type]`` scores; a call that fits is one
    block, with no loop. float16/bfloat16 inputs are computed in float32 (scores, softmax,
    head sums), so the weights are finite wherever the float64 formula is; the result has
    the query's dtype.
    """
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if _kernels_serve(query, key, attn_mask, average_heads, rows):  # on a GPU: no per-head scores at all
        try:
            return _triton_weights.head_mean_weights(query, key, attn_mask, is_causal, scale)
        except Exception as exc:  # a Triton or driver that cannot build them: the blocked path, for good
            _triton_weights.disable(exc)
    return _weights_pass(query, key, None, attn_mask, is_causal, scale, average_heads, rows)[1]


def weights_and_output(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    average_heads: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(weights @ value, weights)`` in one pass: each block of per-head weights gives its
    rows of the output and of the (head-averaged) weights, so the scores are computed once.

    This is torch's own weights path (the output from the weights) made blockwise: no
    second score pass in a fused kernel, and no more than one block of per-head weights
    in memory unless they are returned. ``value`` (*, S, Ev) -> output (*, L, Ev).
    """
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    out, weights = _weights_pass(query, key, value, attn_mask, is_causal, scale, average_heads, None)
    assert out is not None
    return out, weights


def _weights_pass(query: Tensor, key: Tensor, value: Tensor | None, attn_mask: Tensor | None, is_causal: bool,
                  scale: float, average_heads: bool, rows: RowIndex) -> tuple[Tensor | None, Tensor]:
    """The blocked pass behind both functions above: ``(output or None, weights)``."""
    L, S = query.size(-2), key.size(-2)
    if attn_mask is None and not is_causal and rows is None and query.dtype not in _HALF and _small(query, S):
        # small and unmasked (how weights are usually looked at): a few ops, no blocks
        w = torch.softmax(torch.matmul(query * scale, key.transpose(-2, -1)), dim=-1)  # (*, L, S)
        out = None if value is None else torch.matmul(w, value)  # (*, L, Ev)
        return out, (_head_mean(w) if average_heads else w)
    index = None if rows is None else _row_index(rows, L, query.device)
    acc = torch.float32 if query.dtype in _HALF else query.dtype  # the dtype of the arithmetic
    grad = wants_grad(query, key, value, attn_mask)
    mask = attn_mask
    if index is not None:  # the chosen rows, gathered once: (*, R, E) and (*, R or 1, S)
        query = query.index_select(-2, index)
        if mask is not None and mask.size(-2) > 1:
            mask = mask.index_select(-2, index)
    q = query.to(acc) * scale  # (*, R, E): scaled once, contiguous
    kt = key.to(acc).contiguous().transpose(-2, -1)  # (*, E, S): made contiguous once, not per block
    v = None if value is None else value.to(acc).contiguous()  # (*, S, Ev): made contiguous once, not per block
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

    def output(w: Tensor) -> Tensor | None:  # (*, R_blk, Ev) in value's dtype
        return None if v is None else torch.matmul(w, v).to(value.dtype)

    if n_rows <= block:  # one block: no loop, no buffers
        w = weights(0, n_rows, None)
        return output(w), (_head_mean(w) if average_heads else w).to(query.dtype)
    if grad:
        blocks = [weights(b0, min(n_rows, b0 + block), None) for b0 in range(0, n_rows, block)]
        out = None if v is None else torch.cat([output(w) for w in blocks], dim=-2)
        if average_heads:
            blocks = [w.sum(dim=-3) for w in blocks]  # head sums; divided once, at the end
        res = torch.cat(blocks, dim=-2)
        return out, (res / heads if average_heads else res).to(query.dtype)
    # Without autograd every block reuses one scores buffer and goes straight into one
    # preallocated result: no per-block allocations, no cat.
    res_batch = batch[:-1] if average_heads else batch
    res = q.new_empty(*res_batch, n_rows, S, dtype=query.dtype)
    out = None if v is None else _output_buffer(v, batch, n_rows, value.dtype)
    buffer = q.new_empty(math.prod(batch) * block * S) if inplace else None
    for b0 in range(0, n_rows, block):
        b1 = min(n_rows, b0 + block)
        view = None if buffer is None else buffer[: math.prod(batch) * (b1 - b0) * S].view(*batch, b1 - b0, S)
        w = weights(b0, b1, view)
        if out is not None:
            out[..., b0:b1, :] = torch.matmul(w, v)
        if average_heads and w.dtype == res.dtype:
            torch.sum(w, dim=-3, out=res[..., b0:b1, :])  # straight into the result, no temporary
        else:
            res[..., b0:b1, :] = w.sum(dim=-3) if average_heads else w
    return out, (res.div_(heads) if average_heads else res)


def _small(query: Tensor, S: int) -> bool:
    """Whether a call of ``query`` (*, L, E) over ``S`` keys is small: at most
    ``_SHARED_MAX_SCORES`` scores for its device type."""
    return math.prod(query.shape[:-1]) * S <= _SHARED_MAX_SCORES.get(query.device.type, _SHARED_DEFAULT)


def _output_buffer(v: Tensor, batch: tuple[int, ...], rows: int, dtype: torch.dtype) -> Tensor:
    """An empty output (*batch, rows, Ev) = (..., H, R, Ev), laid out as (..., R, H, Ev) like
    the output of torch's fused kernels: merging the heads, (B, R, H·Ev), is then a view."""
    if not batch:
        return v.new_empty(rows, v.size(-1), dtype=dtype)
    return v.new_empty(*batch[:-1], rows, batch[-1], v.size(-1), dtype=dtype).transpose(-2, -3)


def _kernels_serve(query: Tensor, key: Tensor, mask: Tensor | None, average: bool, rows: RowIndex) -> bool:
    """Whether `attnzoo._triton_weights` computes these head-averaged weights: CUDA
    with Triton installed, all rows, no gradient wanted, not inside torch.compile."""
    return (
        average and rows is None and query.dim() >= 3 and _triton_weights.available(query)
        and not wants_grad(query, key, mask)
        and not torch.compiler.is_compiling()
    )


def _head_mean(w: Tensor) -> Tensor:
    """``w.mean(dim=-3)``: (*, H, L, S) -> (*, L, S), as one small bmm when ``w`` is contiguous.

    A vector of 1/H times the (H, L·S) heads is a third of ``mean``'s time on small CPU
    calls (one kernel, no separate division), and one kernel on a GPU too.
    """
    if not w.is_contiguous() or w.dim() < 4:
        return w.mean(dim=-3)
    *batch, H, L, S = w.shape
    n = math.prod(batch)
    avg = w.new_full((1, 1, H), 1.0 / H).expand(n, 1, H)  # (n, 1, H)
    return torch.bmm(avg, w.view(n, H, L * S)).view(*batch, L, S)  # (n, 1, L·S) -> (*, L, S)


def _softmax_(x: Tensor) -> Tensor:
    """Softmax over the last dim, written over its input (inference only: autograd needs it).

    torch's own CPU softmax kernel reads each row before writing it, so it may write over
    its input; that is one pass instead of the four of an amax/sub/exp/div chain.
    """
    return torch.ops.aten._softmax.out(x, -1, False, out=x)


def _row_index(rows: RowIndex, L: int, device: torch.device, name: str = "weights_for") -> Tensor:
    """The chosen query rows of ``L`` as a long index tensor on ``device`` (negative counted from the end).

    Index tensors and ranges: every entry must be a row, -L..L-1. Slices: ``start`` (when given)
    must be a row, ``stop`` is clamped as Python slices are, the step is not 0. ``name`` is the
    argument named in the errors (``weights_for``, the recorder's ``rows``).
    """
    if isinstance(rows, slice):
        parts = (rows.start, rows.stop, rows.step)
        if any(p is not None and (isinstance(p, bool) or not isinstance(p, int)) for p in parts):
            raise TypeError(f"{name} must be a slice of ints, got {rows!r:.80}")
        if rows.step == 0:
            raise ValueError(f"{name} must be a slice with a nonzero step, got {rows!r}")
        if L > 0 and rows.start is not None and not -L <= rows.start < L:
            raise ValueError(f"{name} indexes query rows 0..{L - 1}, got {rows!r:.80} (start {rows.start})")
        picked = range(L)[rows]
        return torch.arange(picked.start, picked.stop, picked.step, device=device)
    given = rows
    if isinstance(rows, range):
        rows = torch.arange(rows.start, rows.stop, rows.step)
    if not isinstance(rows, Tensor) or rows.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be a slice, range or integer index tensor, got {rows!r:.80}")
    rows = rows.to(device=device, dtype=torch.long).reshape(-1)
    if rows.numel() and (rows.min() < -L or rows.max() >= L):
        shown = given if isinstance(given, range) else given.tolist()
        raise ValueError(f"{name} indexes query rows 0..{L - 1}, got {shown!r:.80}")
    return rows % L
