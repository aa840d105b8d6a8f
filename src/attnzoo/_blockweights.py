"""The exact attention weights under a structured mask (`attnzoo._blocksparse`), a block
of chosen query rows at a time: softmax over the visible keys only, spread over all S.

Shapes: weights (B, H, R, S) for R chosen rows (all L by default), or (B, R, S) averaged
over the heads; the output `dropout(weights) @ value` (B, H, L, Ev) when asked. Rows that
may attend to nothing are 0.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._blockgrad import _take
from ._weights import RowIndex, _row_index


def block_weights(run: Any, rows: RowIndex, p: float, average: bool, with_output: bool) -> tuple[Tensor | None, Tensor]:
    """Exact weights (B, H, R, S) (or (B, R, S) averaged) of the chosen rows, and with
    `with_output` (all rows) the output `dropout(weights) @ value` (B, H, L, Ev)."""
    dev = run.q.device
    index = None if rows is None else _row_index(rows, run.L, dev)
    pos = torch.arange(run.L, device=dev) if index is None else index
    order = None if index is None else torch.sort(pos // run.bq, stable=True).indices
    sorted_pos = pos if order is None else pos[order]
    ws, outs, start = [], [], 0
    for i, group in itertools.groupby((sorted_pos // run.bq).tolist()):
        n = len(list(group))
        qpos, start = sorted_pos[start:start + n], start + n  # the chosen rows in query block i
        sel = slice(int(qpos[0]), int(qpos[-1]) + 1) if index is None else qpos
        w, o = _weights_block(run, i, qpos, sel, p, with_output)
        ws.append(w.mean(dim=-3) if average else w)
        outs.append(o)
    if not ws:
        shape = (run.B, 0, run.S) if average else (run.B, run.H, 0, run.S)
        return (run.v.new_zeros(run.B, run.H, 0, run.v.size(-1)) if with_output else None), run.q.new_zeros(shape)
    w = torch.cat(ws, dim=-2)  # (B, [H,] R, S) in block order
    if order is not None:
        w = w.index_select(-2, torch.argsort(order))  # back in the asked order
    return (torch.cat(outs, dim=-2) if with_output else None), w

def _weights_block(run: Any, i: int, qpos: Tensor, rows: slice | Tensor, p: float,
                   with_output: bool) -> tuple[Tensor, Tensor | None]:
    lq = qpos.numel()
    found = run.keys(i)
    if found is None:
        w = run.q.new_zeros(run.B, run.H, lq, run.S)
        return w, (run.v.new_zeros(run.B, run.H, lq, run.v.size(-1)) if with_output else None)
    cols, kpos = found
    acc = torch.float32 if run.q.dtype in (torch.float16, torch.bfloat16) else run.q.dtype
    qb = _take(run.q, -2, rows).to(acc)  # (B, H, lq, E)
    scores = qb @ _take(run.k, -2, cols).to(acc).transpose(-2, -1) * run.scale  # (B, H, lq, lk)
    tile = run.tile(run.partial[i], qpos, rows, kpos, cols)
    if tile is not None:
        scores = scores.masked_fill(~tile, -math.inf) if tile.dtype == torch.bool else scores + tile
    empty = scores.isneginf().all(dim=-1, keepdim=True)  # (B, H, lq, 1) rows that see nothing
    w = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    if p > 0.0:
        w = F.dropout(w, p=p)
    out = (w @ _take(run.v, -2, cols).to(acc)).to(run.v.dtype) if with_output else None  # (B, H, lq, Ev)
    if isinstance(cols, slice):  # spread over all S keys
        w = F.pad(w, (cols.start, run.S - cols.stop))
    else:
        w = w.new_zeros(*w.shape[:-1], run.S).index_copy(-1, cols, w)
    return w.to(run.q.dtype), out
