"""Relative masks and biases, fast: the band path and the strided bias tiles of
`attnzoo._blocksparse`, on CPU with torch's flash kernel (which needs Ev = E).

**The band path** (`plan`, `Band`, `BandAttention`). A mask of `kv_idx - q_idx` alone
whose visible distances form one interval `[lo, hi]` (`sliding_window(left, right)`,
alone or `& causal()`), optionally with a relative score bias (a `score_bias` with
`relative = True`, e.g. ALiBi), and no `attn_mask`:

* query block t (rows `t·bq .. t·bq + bq - 1`) sees the keys `t·bq + lo ..
  t·bq + bq - 1 + hi`, `lk = bq + hi - lo` of them. Every "interior" block (its keys inside
  `0 .. S-1`) has the same `(bq, lk)` tile, so g of them run as ONE call of batch g over
  views of q, k and v: `(g, H, bq, E)` and overlapping `(g, H, lk, E)` spans of the keys,
  made by `as_strided`, never copied. The tile is built once per call.
* the first and last blocks, whose spans are clipped at 0 or S, run one by one.
* the backward is the CPU flash kernel's own, from the saved log-sum-exp: no second
  forward. It runs in longer blocks (`_BAND_Q_BACKWARD` rows); the key/value gradients
  of overlapping spans are added in `ceil(lk / bq)` passes over spans that do not overlap.

**Strided bias tiles** (`toeplitz_tile`). Any other block of a relative bias (and
relative mask) over a contiguous span of keys: its tile `bias(j - i)` is constant along
diagonals, so with the block's query rows reversed it is a view of one row of `lq + lk - 1`
values per head with strides (1, 1), and a block may be long at no tile memory.

Temporaries stay under `_BAND_BYTES` per call, so time and memory are O(L·(W + bq)).

Shapes: q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) -> out (B, H, L, Ev), every row
seeing at least one key (`plan` returns None otherwise, and the general block path runs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._fused_autograd import _FLASH

__all__ = ["Band", "BandAttention", "plan", "toeplitz_tile"]

# Query rows per band block in the forward and the backward: short blocks waste fewer
# scores at the window's edges (lk = bq + W - 1 keys per row for W visible) and are
# batched anyway, but torch's CPU backward is slower per score on short blocks.
_BAND_Q = 64
_BAND_Q_BACKWARD = 128
# At most this many bytes per call for the largest temporary of each pass (the output
# rows of the batched blocks; the key gradients of their spans): bounds the memory above
# the inputs, outputs and gradients.
_BAND_BYTES = {"forward": 1 << 20, "backward": 1 << 20}
_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class Band:
    """The plan of one call: the distance interval, the blocks, and the tiles."""

    def __init__(self, run: Any, lo: int, hi: int, bq: int, bias_row: Tensor | None) -> None:
        self.run, self.lo, self.hi, self.bq = run, lo, hi, bq
        self.bias_row = bias_row  # (H|1, hi - lo + 1): the score bias at distances lo..hi, or None
        self.lk = bq + hi - lo
        L, S = run.L, run.S
        # interior blocks t0 .. t1-1: t·bq + lo >= 0, t·bq + bq - 1 + hi <= S - 1, t·bq + bq <= L
        self.t0 = max(0, -(lo // bq) if lo < 0 else 0)
        self.t1 = max(self.t0, min((S - bq - hi) // bq + 1, L // bq))
        q, v = run.q, run.v
        E, Ev, size = q.size(-1), v.size(-1), q.element_size()
        # interior blocks per call: the forward's temporary is the calls' output rows, the
        # backward's the key and value gradients of their spans
        self.per_call = {"forward": max(1, _BAND_BYTES["forward"] // (run.H * bq * Ev * size)),
                         "backward": max(1, _BAND_BYTES["backward"] // (run.H * self.lk * max(E, Ev) * size))}
        self.inner = self.tile(0, lo, bq, self.lk) if self.t1 > self.t0 else None

    def with_block(self, bq: int) -> Band:
        """The same band in blocks of `bq` rows."""
        return self if bq == self.bq else Band(self.run, self.lo, self.hi, bq, self.bias_row)

    def tile(self, r0: int, c0: int, lq: int, lk: int) -> Tensor:
        """Float (1, H|1, lq, lk) for rows r0.. × keys c0..: the bias (or 0) inside the band, -inf outside."""
        dev, dtype = self.run.q.device, self.run.q.dtype
        d = (c0 + torch.arange(lk, device=dev)) - (r0 + torch.arange(lq, device=dev))[:, None]  # (lq, lk)
        inside = (d >= self.lo) & (d <= self.hi)
        if self.bias_row is None:
            vals = torch.zeros((), dtype=dtype, device=dev).expand(1, lq, lk)
        else:
            vals = self.bias_row[:, (d - self.lo).clamp(0, self.hi - self.lo)]  # (H|1, lq, lk)
        return vals.masked_fill(~inside, -math.inf).unsqueeze(0)  # (1, H|1, lq, lk)

    def blocks(self, pass_: str) -> list[tuple[str, int, int]]:
        """The calls of the "forward" or "backward" pass in order: ("edge", r0, r1) for a
        clipped block, ("inner", t, g) for g interior blocks from block t."""
        L, bq, per_call = self.run.L, self.bq, self.per_call[pass_]
        out = [("edge", r0, min(L, r0 + bq)) for r0 in range(0, self.t0 * bq, bq)]
        out += [("inner", t, min(per_call, self.t1 - t)) for t in range(self.t0, self.t1, per_call)]
        out += [("edge", r0, min(L, r0 + bq)) for r0 in range(self.t1 * bq, L, bq)]
        return out

    def edge_keys(self, r0: int, r1: int) -> tuple[int, int]:
        return max(0, r0 + self.lo), min(self.run.S, r1 - 1 + self.hi + 1)

    def views(self, b: int, t: int, g: int, *tensors: Tensor, keys: bool = False, step: int = 1) -> list[Tensor]:
        """Batch element b's g blocks t, t + step, ..., as views: (g, H, bq, ·) query rows, or
        with `keys` the (g, H, lk, ·) key spans (overlapping when step·bq < lk)."""
        start, length = (t * self.bq + self.lo, self.lk) if keys else (t * self.bq, self.bq)
        out = []
        for x in tensors:
            xb = x[b]  # (H, L|S, ·)
            sh, sl, se = xb.stride()
            out.append(xb.as_strided((g, xb.size(0), length, xb.size(-1)), (step * self.bq * sl, sh, sl, se),
                                     xb.storage_offset() + start * sl))
        return out

    def forward(self) -> tuple[Tensor, Tensor]:
        """Output (B, H, L, Ev) and the kernel's log-sum-exp per row (B, H, L, 1)."""
        run = self.run
        q, k, v, scale = run.q, run.k, run.v, run.scale
        out = v.new_empty(*q.shape[:-1], v.size(-1))  # (B, H, L, Ev)
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # the kernel's accumulation type
        lse_all = torch.empty(*q.shape[:-1], 1, dtype=acc, device=q.device)  # (B, H, L, 1)
        for kind, a, c in self.blocks("forward"):
            if kind == "edge":
                c0, c1 = self.edge_keys(a, c)
                o, lse = _flash(q[:, :, a:c], k[:, :, c0:c1], v[:, :, c0:c1], 0.0, False,
                                attn_mask=self.tile(a, c0, c - a, c1 - c0), scale=scale)
                out[:, :, a:c] = o
                lse_all[:, :, a:c, 0] = lse
                continue
            for b in range(run.B):
                (qf,), (kf, vf) = self.views(b, a, c, q), self.views(b, a, c, k, v, keys=True)
                o, lse = _flash(qf, kf, vf, 0.0, False, attn_mask=self.inner, scale=scale)  # (g, H, bq, Ev)
                ov, lv = self.views(b, a, c, out, lse_all)
                ov.copy_(o)
                lv.copy_(lse.unsqueeze(-1))  # (g, H, bq, 1)
        return out, lse_all

    def backward(self, grad_out: Tensor, out: Tensor, lse_all: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """dq, dk, dv from the kernel's backward, call by call."""
        run = self.run
        q, k, v, scale = run.q, run.k, run.v, run.scale
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        passes = -(-self.lk // self.bq)  # spans of blocks `passes` apart do not overlap
        for kind, a, c in self.blocks("backward"):
            if kind == "edge":
                c0, c1 = self.edge_keys(a, c)
                gq, gk, gv = _flash_backward(grad_out[:, :, a:c].contiguous(), q[:, :, a:c], k[:, :, c0:c1],
                                             v[:, :, c0:c1], out[:, :, a:c], lse_all[:, :, a:c, 0].contiguous(),
                                             0.0, False, attn_mask=self.tile(a, c0, c - a, c1 - c0), scale=scale)
                dq[:, :, a:c] = gq
                dk[:, :, c0:c1] += gk
                dv[:, :, c0:c1] += gv
                continue
            for b in range(run.B):
                (qf, go, of, lse), (kf, vf) = (self.views(b, a, c, q, grad_out, out, lse_all),
                                               self.views(b, a, c, k, v, keys=True))
                gq, gk, gv = _flash_backward(go.contiguous(), qf, kf, vf, of, lse[..., 0].contiguous(), 0.0, False,
                                             attn_mask=self.inner, scale=scale)
                self.views(b, a, c, dq)[0].copy_(gq)
                for p in range(min(passes, c)):  # blocks p, p + passes, ...: key spans that do not overlap
                    n = len(range(p, c, passes))
                    sk, sv = self.views(b, a + p, n, dk, dv, keys=True, step=passes)  # (n, H, lk, ·)
                    sk += gk[p::passes]
                    sv += gv[p::passes]
        return dq, dk, dv


def plan(run: Any) -> Band | None:
    """The band plan of `run` (a `_blockrun._Blocks`), or None when the band path does
    not apply (see the module docstring)."""
    q, mask, bias = run.q, run.mask, run.bias
    if q.device.type != "cpu" or run.math or run.attn_mask is not None or not mask.relative \
            or (bias is not None and getattr(bias, "relative", False) is not True):
        return None
    L, S = run.L, run.S
    if L == 0 or S == 0 or any(t.stride(-1) != 1 for t in (q, run.k, run.v)):
        return None
    # the visible distances d = kv_idx - q_idx, from -(L-1) to S-1
    n = L + S - 1
    z = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=q.device)
    seen = mask(z, z, z + (L - 1), torch.arange(n, device=q.device).view(1, 1, 1, n))
    seen = seen.reshape(-1).expand(n) if seen.numel() == 1 else seen.reshape(n)
    where = seen.nonzero()
    if where.numel() == 0:
        return None
    lo, hi = int(where[0]) - (L - 1), int(where[-1]) - (L - 1)
    if not bool(seen[lo + L - 1: hi + L].all()):  # holes: not one interval
        return None
    if hi < 0 or (L - 1) + lo > S - 1:  # the first or last row would see nothing
        return None
    bq = min(run.bq, _BAND_Q)
    lk = bq + hi - lo
    if 2 * lk > S:  # a band as wide as the keys: the general path
        return None
    bias_row = None
    if bias is not None:
        r = max(0, -lo)  # a row whose keys r + lo .. r + hi all exist
        if r > L - 1 or r + hi > S - 1:
            return None
        pos = torch.arange(r + lo, r + hi + 1, device=q.device)
        bias_row = run.bias_block(torch.tensor([r], device=q.device), pos)[0, :, 0]  # (H|1, hi - lo + 1)
    band = Band(run, lo, hi, bq, bias_row)
    if band.t1 - band.t0 < 2:
        return None
    (qf,), (kf, vf) = band.views(0, band.t0, 1, q), band.views(0, band.t0, 1, run.k, run.v, keys=True)
    if torch._fused_sdp_choice(qf, kf, vf, band.inner, 0.0, False, scale=run.scale) != _FLASH:
        return None
    return band


class BandAttention(torch.autograd.Function):
    """`BandAttention.apply(q, k, v, band)`: `band.forward()` with `band.backward` as its
    backward (double backward recomputes through the general block path)."""

    @staticmethod
    def forward(ctx, q, k, v, band):  # type: ignore[override]
        with torch.no_grad():
            out, lse = band.forward()
        ctx.band, ctx.lse = band, lse
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiable ops on the saved inputs
            with torch.enable_grad():
                o = ctx.band.run.plain_output(q, k, v)
                dq, dk, dv = torch.autograd.grad(o, (q, k, v), grad_out, create_graph=True)
            return dq, dk, dv, None
        bq = min(ctx.band.run.bq, _BAND_Q_BACKWARD)
        dq, dk, dv = ctx.band.with_block(bq).backward(grad_out, out, ctx.lse)
        return dq, dk, dv, None


def toeplitz_tile(run: Any, partial: bool, r0: int, r1: int, c0: int, c1: int) -> Tensor | None:
    """The tile of rows r0..r1-1 (in REVERSED order) × keys c0..c1-1 of a relative score bias
    (and relative mask): (1, H|1, lq, lk), a view of one row of lq + lk - 1 values per head.

    Reversed row r' is query i = r1 - 1 - r'; key c is j = c0 + c; so j - i = c0 - r1 + 1 +
    (r' + c), and the tile is `u[r' + c]`: strides (1, 1). None (build it densely) when a
    row would see no key."""
    lq, lk = r1 - r0, c1 - c0
    dev = run.q.device
    rows = torch.arange(r1 - 1, r0 - 1, -1, device=dev)  # u[0 .. lq-1]: rows r1-1 .. r0 at key c0
    keys = torch.arange(c0 + 1, c1, device=dev)  # u[lq .. lq+lk-2]: row r0 at keys c0+1 .. c1-1
    first = run.bias_block(rows, torch.tensor([c0], device=dev))[0, :, :, 0]  # (H|1, lq)
    last = run.bias_block(torch.tensor([r0], device=dev), keys)[0, :, 0, :]  # (H|1, lk-1)
    heads = max(first.size(0), last.size(0))
    u = torch.cat([first.expand(heads, lq), last.expand(heads, lk - 1)], dim=-1)  # (H|1, lq + lk - 1)
    if partial:  # the relative mask at the same distances
        z = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
        seen = torch.cat([run.mask(z, z, rows.view(1, 1, lq, 1), z + c0).reshape(-1).expand(lq),
                          run.mask(z, z, z + r0, keys.view(1, 1, 1, -1)).reshape(-1).expand(lk - 1)])
        count = torch.nn.functional.pad(seen.long().cumsum(0), (1, 0))  # seen keys before t
        if bool(((count[lk:] - count[:lq]) == 0).any()):  # some row sees nothing: dense
            return None
        u = u.masked_fill(~seen, -math.inf)
    u = u.contiguous()
    n = u.size(-1)
    return u.as_strided((1, u.size(0), lq, lk), (u.size(0) * n, n, 1, 1))
