"""Which blocks of one ring step a rank computes, and the mask and bias tile of each.

A ring step pairs this rank's query shard with one key shard (``src``). Both are made of
chunks of GLOBAL positions (`ShardLayout.chunks`), so every (query chunk × key chunk)
block is a block of the full (Lp, Lp) score matrix. Each block is

* skipped when ``is_causal`` or the structured ``mask`` hides it entirely (the mask's
  `block_map` over chunk-sized blocks says `EMPTY`): no scores are computed;
* cut into row blocks of at most ``rows_per`` query rows (memory), each with

  - a bool tile (..., R, C), True = may attend: the causal cut, the travelling key mask,
    this rank's ``attn_mask`` rows, and the structured mask evaluated at the block's global
    positions when the block map says `PARTIAL` (`FULL` blocks need no tile);
  - a float score bias (1, Hkv or 1, G or 1, R, C) from ``score_bias(q_idx (R, 1),
    kv_idx (1, C))`` with global positions (ALiBi, T5), or None.

Shapes: scores of one row block are (B, Hkv, G, R, C) with G = H // Hkv query heads per
key/value head; every tile here broadcasts to that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._blocksparse import bias_tile as _checked_tile
from ..masks import EMPTY, FULL, StructuredMask
from .zigzag import ShardLayout

__all__ = ["Block", "RingBlocks"]

ScoreBias = Callable[[Tensor, Tensor], Tensor]


class Block(NamedTuple):
    """One row block: local query rows, local key columns, their global ranges, and how masked."""

    rows: tuple[int, int]  # local query rows [r0, r1)
    keys: tuple[int, int]  # local key columns of the source shard [c0, c1)
    grows: tuple[int, int]  # global query positions
    gkeys: tuple[int, int]  # global key positions
    cut: bool  # the causal mask cuts through it
    partial: bool  # the structured mask hides some of it (evaluate it)


class RingBlocks:
    """The blocks of every ring step of one rank (one call of ring attention)."""

    def __init__(self, layout: ShardLayout, rank: int, causal: bool, rows_per: int, mask: StructuredMask | None,
                 score_bias: ScoreBias | None, batch: int, heads: int, kv_heads: int, device: torch.device) -> None:
        self.layout, self.rank, self.causal, self.rows_per = layout, rank, causal, rows_per
        self.mask, self.score_bias, self.device = mask, score_bias, device
        self.B, self.H, self.Hkv = batch, heads, kv_heads
        self.chunk = layout.length // (2 * layout.world if layout.zigzag else layout.world)
        # (nc, nc) EMPTY/PARTIAL/FULL per (query chunk, key chunk), nc = 2P (P if not zigzag);
        # every rank computes the same map, so every rank knows every rank's skips
        self.classes = None if mask is None else mask.block_map(
            layout.length, layout.length, self.chunk, self.chunk, batch, heads).tolist()

    def step(self, src: int) -> tuple[list[Block], int]:
        """The row blocks to compute against the key shard of rank ``src``, and how many
        (query chunk × key chunk) blocks are skipped because the masks hide them entirely."""
        out: list[Block] = []
        skipped = 0
        q_off = 0
        for qa, qb in self.layout.chunks(self.rank):
            k_off = 0
            for ka, kb in self.layout.chunks(src):
                cls = FULL if self.classes is None else self.classes[qa // self.chunk][ka // self.chunk]
                if cls == EMPTY or (self.causal and ka > qb - 1):
                    skipped += 1
                else:
                    for r0 in range(qa, qb, self.rows_per):
                        r1 = min(qb, r0 + self.rows_per)
                        kend = min(kb, r1) if self.causal else kb  # keys after the last query row are hidden
                        if kend > ka:
                            out.append(Block((q_off + r0 - qa, q_off + r1 - qa), (k_off, k_off + kend - ka),
                                             (r0, r1), (ka, kend), self.causal and r0 < kend - 1, cls != FULL))
                k_off += kb - ka
            q_off += qb - qa
        return out, skipped

    def allowed(self, blk: Block, key_mask: Tensor | None, attn_mask: Tensor | None) -> Tensor | None:
        """Bool (..., R, C) True = may attend, broadcastable to (B, Hkv, G, R, C); None = all."""
        allowed = None
        q_idx = torch.arange(*blk.grows, device=self.device)  # (R,) global query positions
        kv_idx = torch.arange(*blk.gkeys, device=self.device)  # (C,) global key positions
        if blk.cut:  # the query at global position p sees keys 0..p
            allowed = q_idx[:, None] >= kv_idx  # (R, C)
        if key_mask is not None:
            km = key_mask[:, None, None, None, blk.keys[0]:blk.keys[1]]  # (B, 1, 1, 1, C)
            allowed = km if allowed is None else allowed & km
        if attn_mask is not None:
            am = attn_mask[..., blk.rows[0]:blk.rows[1], blk.gkeys[0]:blk.gkeys[1]]  # (b, h, g, R, C)
            allowed = am if allowed is None else allowed & am
        if blk.partial:
            assert self.mask is not None
            R, C = q_idx.numel(), kv_idx.numel()
            b = torch.arange(self.B, device=self.device).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
            h = torch.arange(self.H, device=self.device).view(1, -1, 1, 1)  # (1, H, 1, 1)
            sm = self.mask(b, h, q_idx.view(1, 1, R, 1), kv_idx.view(1, 1, 1, C))  # (B|1, H|1, R|1, C|1)
            allowed = _and(allowed, self._heads(sm))
        return allowed

    def bias(self, blk: Block, dtype: torch.dtype) -> Tensor | None:
        """The score bias of a row block, (1, Hkv or 1, G or 1, R, C), or None."""
        if self.score_bias is None:
            return None
        t = bias_tile(self.score_bias, torch.arange(*blk.grows, device=self.device),
                      torch.arange(*blk.gkeys, device=self.device), self.H)  # (H|1, R, C)
        t = t.to(dtype).reshape(1, -1, *t.shape[-2:])  # (1, H|1, R, C)
        return self._heads(t)

    def _heads(self, t: Tensor) -> Tensor:
        """(B|1, H|1, R|1, C|1) or fewer dims -> (B|1, Hkv|1, G|1, R|1, C|1)."""
        t = t.reshape(*(1,) * (4 - t.dim()), *t.shape)  # (B|1, H|1, R|1, C|1)
        if t.size(1) == self.H and self.H > 1:
            return t.view(t.size(0), self.Hkv, self.H // self.Hkv, *t.shape[2:])  # (B|1, Hkv, G, R|1, C|1)
        return t[:, :, None]  # (B|1, 1, 1, R|1, C|1)


def bias_tile(score_bias: ScoreBias, q_idx: Tensor, kv_idx: Tensor, heads: int) -> Tensor:
    """``score_bias(q_idx (R, 1), kv_idx (1, C))``, checked: a float (H or 1, R, C) or (R, C)
    tensor that needs no gradient."""
    t = _checked_tile(score_bias, q_idx, kv_idx, heads)
    if t.requires_grad:
        raise ValueError("score_bias must not need gradients under ring attention (its parameters would "
                         "get none): compute it under torch.no_grad() or from detached tensors")
    return t


def _and(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a & b
