"""One call of the block path (`attnzoo._blocksparse`): its inputs, block map, tiles and
kernel calls (`_Blocks`), and the checked evaluation of a `score_bias` (`bias_tile`).

Shapes: q (B, H, L, E), k and v (B, H, S, E|Ev) with the key heads already repeated for
GQA; a query block's tile broadcasts to (B, H, lq, lk) (bool: True = may attend; float:
added to the scores). A group is a run of query blocks that goes to the kernel in one
call (`_Blocks.groups`); the output pass runs group by group, with its own backward
(`attnzoo._blockgrad`), or through the band path (`attnzoo._band`) for windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._band import BandAttention
from ._band import plan as band_plan
from ._band import toeplitz_tile
from ._blockgrad import Blockwise, Strided, _fold, _gather, _positions, _take, _unfold
from ._fused_autograd import fused_attention, math_attention, needs_math, wants_grad
from ._structured import EMPTY, PARTIAL, StructuredMask

__all__ = ["bias_tile"]

ScoreBias = Callable[[Tensor, Tensor], Tensor]

# Consecutive query blocks that see as many keys are batched into one kernel call of at
# most this many scores (each call is a round of the thread pool; the gathered keys of a
# call are a copy, so the calls stay modest).
_GROUP_SCORES = 1 << 23
# With a relative score bias the tiles are views (`_band.toeplitz_tile`), so a call's
# temporaries do not grow with its scores, and torch's CPU kernel is faster on long
# blocks: calls of up to this many scores.
_LEAN_GROUP_SCORES = 1 << 28
# A relative mask (windows, causal) keeps its tiles, by diagonal offset, up to this many.
_CACHED_TILES = 256


def bias_tile(score_bias: ScoreBias, q_idx: Tensor, kv_idx: Tensor, heads: int) -> Tensor:
    """`score_bias(q_idx (R, 1), kv_idx (1, C))`, checked: a float (H or 1, R, C) or (R, C) tensor."""
    R, C = q_idx.numel(), kv_idx.numel()
    t = score_bias(q_idx.view(R, 1), kv_idx.view(1, C))
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() not in (2, 3) \
            or t.shape[-2:] != (R, C) or (t.dim() == 3 and t.size(0) not in (1, heads)):
        got = f"shape {tuple(t.shape)} dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"score_bias(q_idx, kv_idx) must return a float (H or 1, lq, lk) = "
                         f"({heads} or 1, {R}, {C}) tensor, got {got}")
    return t


class _Blocks:
    """One call: the inputs, the block map, and the tiles and blocks of the two passes."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, mask: StructuredMask, bias: ScoreBias | None,
                 attn_mask: Tensor | None, scale: float | None, block_q: int, block_kv: int) -> None:
        self.q, self.k, self.v, self.mask, self.bias, self.attn_mask = q, k, v, mask, bias, attn_mask
        self.B, self.H, self.L, E = q.shape
        self.S = k.size(-2)
        self.scale = 1.0 / math.sqrt(E) if scale is None else scale
        self.bq, self.bk = block_q, block_kv
        mask._check(self.L, self.S, self.B)
        bmap = mask.block_map(self.L, self.S, block_q, block_kv, self.B, self.H)  # (nq, nk) int8
        self.visible: list[list[int]] = [[] for _ in range(bmap.size(0))]
        self.partial = [False] * bmap.size(0)
        if bmap.numel():
            self.partial = (bmap == PARTIAL).any(dim=1).tolist()
            for i, j in (bmap > EMPTY).nonzero().tolist():
                self.visible[i].append(j)
        self.math = needs_math(q, k, v, attn_mask)  # torch.func, forward AD: plain ops per block
        # a mask of i - j alone (windows, causal) with nothing else: one tile per diagonal offset
        self.relative = mask.relative and attn_mask is None and bias is None
        # kept on the mask object: a model's layers (and steps) reuse the same few tiles
        self.cache: dict = mask.__dict__.setdefault("_tile_cache", {}) if self.relative else {}
        if len(self.cache) > _CACHED_TILES:
            self.cache.clear()
        # a relative score bias (and mask): tiles are views of one row per head, so the
        # groups may be long (the fused kernel is faster on long blocks)
        self.lean = (bias is not None and getattr(bias, "relative", False) is True and mask.relative
                     and attn_mask is None and not self.math)

    # ------------------------------------------------------------------ one block's keys
    def keys(self, i: int) -> tuple[slice | Tensor, Tensor] | None:
        """Key columns of query block i: (a slice or an index tensor, their positions), or None."""
        blocks = self.visible[i] if i < len(self.visible) else []
        if not blocks:
            return None
        s0, s1 = blocks[0] * self.bk, min(self.S, (blocks[-1] + 1) * self.bk)
        dev = self.q.device
        if blocks[-1] - blocks[0] + 1 == len(blocks):  # contiguous: a view, no copy
            return slice(s0, s1), torch.arange(s0, s1, device=dev)
        pos = torch.cat([torch.arange(j * self.bk, min(self.S, (j + 1) * self.bk), device=dev) for j in blocks])
        return pos, pos

    def tile(self, partial: bool, qpos: Tensor, rows: slice | Tensor, kpos: Tensor,
             cols: slice | Tensor) -> Tensor | None:
        """The mask of query rows `qpos` × keys `kpos`: None (all visible), bool or float
        (B|1, H|1, lq, lk)."""
        lq, lk = qpos.numel(), kpos.numel()
        allowed = None
        if partial:  # the structured mask hides some of these pairs
            b = torch.arange(self.B, device=qpos.device).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
            h = torch.arange(self.H, device=qpos.device).view(1, -1, 1, 1)  # (1, H, 1, 1)
            allowed = self.mask(b, h, qpos.view(1, 1, lq, 1), kpos.view(1, 1, 1, lk))
            allowed = allowed.reshape(*(1,) * (4 - allowed.dim()), *allowed.shape)  # (B|1, H|1, lq|1, lk|1)
        extra = None  # float terms added to the scores
        if self.attn_mask is not None:
            am = self.attn_mask
            am = am if am.size(-2) == 1 else _take(am, -2, rows)
            am = am if am.size(-1) == 1 else _take(am, -1, cols)  # (B|1, H|1, lq|1, lk|1)
            if am.dtype == torch.bool:
                allowed = am if allowed is None else allowed & am
            else:
                extra = am
        if self.bias is not None:
            t = self.bias_block(qpos, kpos)  # (1, H|1, lq, lk)
            extra = t if extra is None else extra + t
        if extra is None:
            return allowed
        return extra if allowed is None else extra.masked_fill(~allowed, -math.inf)

    def bias_block(self, qpos: Tensor, kpos: Tensor) -> Tensor:
        """The score bias of rows `qpos` × keys `kpos`, checked: (1, H|1, lq, lk) in q's dtype."""
        t = bias_tile(self.bias, qpos, kpos, self.H)
        return t.to(self.q.dtype).reshape(1, t.size(0) if t.dim() == 3 else 1, qpos.numel(), kpos.numel())

    # ------------------------------------------------------------------ the output pass
    def plan(self) -> list[tuple[int, int, slice | Tensor | None, tuple]]:
        """Per query block: (r0, r1, key columns or None when nothing is visible, the recipe
        of its tile for `prepared`). Tiles are built when their block runs, never all at once."""
        out = []
        for i, r0 in enumerate(range(0, self.L, self.bq)):
            r1 = min(self.L, r0 + self.bq)
            found = self.keys(i)
            cols, kpos = (None, None) if found is None else found
            out.append((r0, r1, cols, (self.partial[i], r0, r1, cols, kpos)))
        return out

    def prepared(self, partial: bool, r0: int, r1: int, cols: slice | Tensor, kpos: Tensor) -> object:
        """The tile of query block i (rows r0..r1-1) over its keys: bool/float/None with
        `math`, else `_opened`'s (float mask, empty rows). A relative mask's tile repeats
        along the diagonal, so it is built once per offset."""
        key = None
        if self.relative and isinstance(cols, slice):
            key = (r0 - cols.start, r1 - r0, kpos.numel(), self.q.dtype, self.q.device, self.math)
        if key is not None and key in self.cache:
            return self.cache[key]
        tile = self.tile(partial, torch.arange(r0, r1, device=self.q.device), slice(r0, r1), kpos, cols)
        if self.math:
            prepared = tile
        elif not partial and self.attn_mask is None:  # a bias alone (finite): no row is empty
            prepared = (tile, None)
        else:
            prepared = _opened(tile, self.q.dtype)
        if key is not None:
            self.cache[key] = prepared
        return prepared

    def tiles_want_grad(self) -> bool:
        """Whether a tile carries a gradient (a learned score bias, a float attn_mask)."""
        if self.attn_mask is not None and self.attn_mask.requires_grad:
            return True
        if self.bias is None or not torch.is_grad_enabled():
            return False
        one = torch.zeros(1, 1, dtype=torch.long, device=self.q.device)
        probe = self.bias(one, one)  # a 1×1 tile: does the bias come from parameters?
        return isinstance(probe, Tensor) and probe.requires_grad

    def groups(self) -> list[tuple[int, int, Tensor | slice | None, list, bool]]:
        """The plan in kernel calls of at most `_GROUP_SCORES` scores: runs of consecutive
        query blocks that see the same keys (one call over their rows), or failing that,
        blocks of one length that see as many keys (one call, the blocks batched). Each:
        (r0, r1, key columns (of every block in order when batched; None when nothing is
        visible), the blocks' tile recipes, batched)."""
        out: list[tuple[int, int, Tensor | slice | None, list, bool]] = []
        run: list = []
        fold = False

        def flush() -> None:
            if not run:
                return
            cols = run[0][2]
            if fold:  # the blocks' columns, one after the other
                cols = _strided([c for _, _, c, _ in run]) or torch.cat([_positions(c, self.q.device) for _, _, c, _ in run])
            out.append((run[0][0], run[-1][1], cols, [t for *_, t in run], fold))
            run.clear()

        for block in self.plan():
            r0, r1, cols, _ = block
            joins = bool(run) and cols is not None and run[0][2] is not None
            if joins:
                lk, first = _length(cols), run[0][2]
                limit = _LEAN_GROUP_SCORES if self.lean else _GROUP_SCORES
                joins = (run[-1][1] - run[0][0] + r1 - r0) * lk * self.H * self.B <= limit
                same = _same(cols, first) and not fold
                batch = (len(run) == 1 or fold) and r1 - r0 == run[0][1] - run[0][0] and lk == _length(first)
                joins = joins and (same or batch)
                if joins and not same:
                    fold = True
            if not joins:
                flush()
                fold = False
            run.append(block)
        flush()
        return out

    def output(self, p: float) -> Tensor:
        """Attention output (B, H, L, Ev), a group of query blocks (one kernel call) at a time."""
        if self.L == 0 or self.S == 0:  # nothing to score: 0, through plain ops (gradients stay defined)
            return math_attention(self.q, self.k, self.v, None, 0.0, False, self.scale)[0]
        grad = wants_grad(self.q, self.k, self.v)
        tile_grad = grad and self.tiles_want_grad()  # a learned bias: autograd through the tiles
        band = band_plan(self) if p == 0.0 and not tile_grad else None
        if band is not None:  # a window: few calls over views, no copies (`attnzoo._band`)
            return BandAttention.apply(self.q, self.k, self.v, band) if grad else band.forward()[0]
        groups = self.groups()
        if p == 0.0 and not self.math and grad and not tile_grad:
            # the backward recomputes each group: nothing per block is kept for it
            return Blockwise.apply(self.q, self.k, self.v, self, groups)
        if not grad:  # straight into one buffer, no cat
            out = self.v.new_empty(*self.q.shape[:-1], self.v.size(-1))  # (B, H, L, Ev)
            for r0, r1, cols, tiles, fold in groups:
                out[:, :, r0:r1] = self.group(self.q[:, :, r0:r1], *_gather(self.k, self.v, cols), cols is None,
                                              tiles, fold, p)
            return out
        return self.plain_output(self.q, self.k, self.v, p, groups)

    def plain_output(self, q: Tensor, k: Tensor, v: Tensor, p: float = 0.0, groups: list | None = None) -> Tensor:
        """The output (B, H, L, Ev) of `q`, `k`, `v` (this call's, or tensors of their shapes)
        with autograd through every group: twice differentiable, tiles with gradients."""
        outs = [self.group(q[:, :, r0:r1], *_gather(k, v, cols), cols is None, tiles, fold, p)
                for r0, r1, cols, tiles, fold in (self.groups() if groups is None else groups)]
        return torch.cat(outs, dim=-2)  # (B, H, L, Ev)

    def group(self, qr: Tensor, kg: Tensor, vg: Tensor, nothing: bool, recipes: list, fold: bool,
              p: float) -> Tensor:
        """Output rows (B, H, R, Ev) of the query blocks `qr` (B, H, R, E) of `recipes` in one
        kernel call, over their keys/values `kg`, `vg`: shared (B, H, lk, E|Ev), or with
        `fold` gathered per block (B, H, g·lk, E|Ev) and the g blocks batched."""
        if nothing:  # nothing visible: 0 (over no keys, so gradients stay defined: 0)
            return math_attention(qr, kg[:, :, :0], vg[:, :, :0], None, 0.0, False, self.scale)[0]
        q4, k4, v4, tile, flip = self.kernel_inputs(qr, kg, vg, recipes, fold)
        if self.math:
            out = math_attention(q4, k4, v4, tile, p, False, self.scale)[0]
        else:
            fmask, empty = tile
            out = fused_attention(q4, k4, v4, fmask, p, False, self.scale)  # (B|B·g, H, R|lq, Ev)
            out = out if empty is None else out.masked_fill(empty, 0.0)  # rows that see nothing: 0
        out = out.flip(-2) if flip else out  # rows back in order
        return _unfold(out, qr.size(0), len(recipes)) if fold else out

    def kernel_inputs(self, qr: Tensor, kg: Tensor, vg: Tensor, recipes: list,
                      fold: bool) -> tuple[Tensor, Tensor, Tensor, Any, bool]:
        """What one kernel call of a group gets: q, k, v ((B·g, H, lq|lk, E) when `fold`), the
        tile (see `prepared`), and whether q's rows come reversed (a relative bias's tile is
        then a strided view of one row per head, `attnzoo._band.toeplitz_tile`)."""
        if not fold:  # the blocks share their keys: one longer block of rows, one tile
            first, last = recipes[0], recipes[-1]
            partial = any(r[0] for r in recipes)
            if self.lean and isinstance(first[3], slice):
                tile = toeplitz_tile(self, partial, first[1], last[2], first[3].start, first[3].stop)
                if tile is not None:
                    return qr.flip(-2), kg, vg, (tile, None), True
            return qr, kg, vg, self.prepared(partial, first[1], last[2], first[3], first[4]), False
        g, B = len(recipes), qr.size(0)
        lq, lk = qr.size(-2) // g, kg.size(-2) if kg.dim() == 5 else kg.size(-2) // g
        tiles = [self.prepared(*recipe) for recipe in recipes]  # built now, dropped after the call
        if self.math:
            tile = _stacked(tiles, B, lq, lk, none=True)
        else:
            tile = (_stacked([t[0] for t in tiles], B, lq, lk), _stacked([t[1] for t in tiles], B, lq, 1, none=False))
        return _fold(qr, g), _fold(kg, g), _fold(vg, g), tile, False

def _opened(tile: Tensor | None, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """A tile for the fused kernel: (float mask with the rows that see nothing opened, those
    rows (B|1, H|1, lq, 1) or None when every row sees a key). Few ops: each one is a
    thread-pool round trip on a CPU."""
    if tile is None:
        return None, None
    if tile.dtype == torch.bool:
        seen = tile.any(dim=-1, keepdim=True)
        tile = torch.where(tile, torch.zeros((), dtype=dtype), torch.full((), -math.inf, dtype=dtype))
    else:
        seen = ~tile.isneginf().all(dim=-1, keepdim=True)
    if bool(seen.all()):
        return tile, None
    return tile.masked_fill(~seen, 0.0), ~seen


def _length(cols: slice | Tensor) -> int:
    return cols.stop - cols.start if isinstance(cols, slice) else cols.numel()


def _stacked(tiles: list, B: int, lq: int, lk: int, none: float | bool = 0.0) -> Tensor | None:
    """One tile per block (B|1, H|1, lq, lk|1) or None (meaning `none` everywhere) -> one
    for the batch (B·g|1, H|1, lq, lk) of the blocks, as `group` lays them out; None when
    every block has none."""
    if all(t is None for t in tiles):
        return None
    first = tiles[0]
    if len(tiles) == 1 or (all(t is first for t in tiles) and first.size(0) == 1):
        return first  # one tile for every block (a relative mask): it broadcasts
    ref = next(t for t in tiles if t is not None)
    heads = max(t.size(1) for t in tiles if t is not None)
    fill = torch.full((), none, dtype=ref.dtype, device=ref.device)
    full = [fill.expand(B, heads, lq, lk) if t is None else t.expand(B, heads, lq, lk) for t in tiles]
    return torch.stack(full, dim=1).reshape(B * len(tiles), heads, lq, lk)  # (B·g, H|1, lq, lk)


def _same(a: slice | Tensor, b: slice | Tensor) -> bool:
    """Whether two blocks' key columns are the same keys."""
    if isinstance(a, slice) and isinstance(b, slice):
        return a == b
    return a is b


def _strided(cols: list) -> Strided | None:
    """The key spans of a batched group as one `Strided` when they are equally spaced
    slices (a window's blocks): then the keys are a view, not a gathered copy."""
    if not all(isinstance(c, slice) for c in cols):
        return None
    step = cols[1].start - cols[0].start
    if step <= 0 or any(b.start - a.start != step for a, b in zip(cols, cols[1:])):
        return None
    return Strided(cols[0].start, step, cols[0].stop - cols[0].start, len(cols))
