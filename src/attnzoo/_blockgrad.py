"""The backward of blockwise attention (`attnzoo._blocksparse`), one group of blocks at a time.

Shapes: q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) -> out (B, H, L, Ev). A group is
a run of query blocks that go to the kernel in one call: either rows r0..r1-1 over one
span of keys, or g blocks of one length "folded" into the batch, (B·g, H, lq, E), each
over its own gathered keys.

Autograd through the blocks would keep every block's inputs and send each block's
key/query gradient back through a slice of the whole tensor (a full-size zero tensor per
block: O(L·S) traffic). Here the forward keeps only q, k, v, the output and, where torch's
CPU flash kernel ran, its log-sum-exp per row; the backward runs that kernel's own
backward per group (no second forward), or recomputes the group (other devices, rows that
see nothing), and writes the gradients straight into dq, dk, dv. With
`create_graph=True` it builds them from differentiable ops on the saved inputs instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fused_autograd import _FLASH


class Blockwise(torch.autograd.Function):
    """`Blockwise.apply(q, k, v, run, groups)`: the output of `run` (a `_blockrun._Blocks`)
    over its `groups` (see `_Blocks.groups`), with the backward of the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, run, groups):  # type: ignore[override]
        out = v.new_empty(*q.shape[:-1], v.size(-1))  # (B, H, L, Ev)
        lses: list[Tensor | None] = []  # per group: the CPU flash kernel's log-sum-exp, or None: recompute
        with torch.no_grad():
            for r0, r1, cols, recipes, fold in groups:
                qr, (kg, vg) = q[:, :, r0:r1], _gather(k, v, cols)
                lse = None
                if cols is not None and q.device.type == "cpu":
                    q4, k4, v4, (fmask, empty), flip = run.kernel_inputs(qr, kg, vg, recipes, fold)
                    if empty is None and torch._fused_sdp_choice(q4, k4, v4, fmask, 0.0, False,
                                                                 scale=run.scale) == _FLASH:
                        o4, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                            q4, k4, v4, 0.0, False, attn_mask=fmask, scale=run.scale)
                        o4 = o4.flip(-2) if flip else o4  # lse stays in the kernel's row order
                        out[:, :, r0:r1] = _unfold(o4, q.size(0), len(recipes)) if fold else o4
                if lse is None:
                    out[:, :, r0:r1] = run.group(qr, kg, vg, cols is None, recipes, fold, 0.0)
                lses.append(lse)
        ctx.run, ctx.groups, ctx.lses = run, groups, lses
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out = ctx.saved_tensors
        run = ctx.run
        higher = torch.is_grad_enabled()  # create_graph=True: differentiable gradients
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for (r0, r1, cols, recipes, fold), lse in zip(ctx.groups, ctx.lses):
            if cols is None:
                continue
            qr, (kg, vg) = q[:, :, r0:r1], _gather(k, v, cols)
            go = grad_out[:, :, r0:r1]
            if lse is not None and not higher:  # the kernel's own backward, no second forward
                q4, k4, v4, (fmask, _), flip = run.kernel_inputs(qr, kg, vg, recipes, fold)
                g, B = len(recipes), q.size(0)
                o4, go4 = (_fold(out[:, :, r0:r1], g), _fold(go, g)) if fold else (out[:, :, r0:r1], go)
                if flip:  # the rows in the kernel's (reversed) order
                    o4, go4 = o4.flip(-2), go4.flip(-2)
                gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                    go4.contiguous(), q4, k4, v4, o4, lse, 0.0, False, attn_mask=fmask, scale=run.scale)
                gq = gq.flip(-2) if flip else gq
                if fold:
                    gq, gk, gv = _unfold(gq, B, g), _unfold(gk, B, g), _unfold(gv, B, g)
            else:  # recompute the group's forward, then its backward
                if not higher:
                    qr, kg, vg = (t.detach().requires_grad_() for t in (qr, kg, vg))
                with torch.enable_grad():
                    o = run.group(qr, kg, vg, False, recipes, fold, 0.0)
                    gq, gk, gv = torch.autograd.grad(o, (qr, kg, vg), go, create_graph=higher)
            if gk.dim() == 5:  # grads of Strided views (B, g, H, lk, E) -> (B, H, g·lk, E)
                gk, gv = (t.transpose(1, 2).reshape(t.size(0), t.size(2), -1, t.size(-1)) for t in (gk, gv))
            idx = _positions(cols, q.device)
            if higher:  # out of place: the sums stay differentiable
                dq = dq.index_add(-2, torch.arange(r0, r1, device=q.device), gq)
                dk, dv = dk.index_add(-2, idx, gk), dv.index_add(-2, idx, gv)
            else:
                dq[:, :, r0:r1] = gq
                if isinstance(cols, slice):
                    dk[:, :, cols] += gk
                    dv[:, :, cols] += gv
                else:
                    dk.index_add_(-2, idx, gk)
                    dv.index_add_(-2, idx, gv)
        return dq, dk, dv, None, None


def _fold(x: Tensor, g: int) -> Tensor:
    """(B, H, g·l, E) (or spans (B, g, H, l, E)) -> (B·g, H, l, E): g blocks become batch elements."""
    if x.dim() == 5:
        return x.reshape(-1, *x.shape[2:])
    B, H, R, E = x.shape
    return x.reshape(B, H, g, R // g, E).transpose(1, 2).reshape(B * g, H, R // g, E)


def _unfold(x: Tensor, B: int, g: int) -> Tensor:
    """(B·g, H, l, E) -> (B, H, g·l, E), the inverse of `_fold`."""
    _, H, n, E = x.shape
    return x.reshape(B, g, H, n, E).transpose(1, 2).reshape(B, H, g * n, E)


def _gather(k: Tensor, v: Tensor, cols: slice | Tensor | Strided | None) -> tuple[Tensor, Tensor]:
    """Keys and values at `cols`: a view for a slice, (B, g, H, lk, E) views for `Strided`
    spans, gathered (B, H, n, E) for an index tensor."""
    if cols is None:
        return k[:, :, :0], v[:, :, :0]
    if isinstance(cols, Strided):
        return cols.view(k), cols.view(v)
    return _take(k, -2, cols), _take(v, -2, cols)


def _positions(cols: slice | Tensor | Strided, device: torch.device) -> Tensor:
    """The key positions of `cols`, block after block."""
    if isinstance(cols, Strided):
        starts = torch.arange(cols.count, device=device)[:, None] * cols.step + cols.start  # (g, 1)
        return (starts + torch.arange(cols.length, device=device)).reshape(-1)  # (g·lk,)
    return torch.arange(cols.start, cols.stop, device=device) if isinstance(cols, slice) else cols


class Strided:
    """The key spans of g query blocks: `length` keys from `start + t·step`, t = 0..g-1."""

    def __init__(self, start: int, step: int, length: int, count: int) -> None:
        self.start, self.step, self.length, self.count = start, step, length, count

    def view(self, x: Tensor) -> Tensor:
        """x (B, H, S, E) -> the spans (B, g, H, length, E), overlapping views of x."""
        B, H, _, E = x.shape
        sb, sh, ss, se = x.stride()
        return x.as_strided((B, self.count, H, self.length, E), (sb, self.step * ss, sh, ss, se),
                            x.storage_offset() + self.start * ss)


def _take(x: Tensor, dim: int, index: slice | Tensor) -> Tensor:
    """`x` restricted to `index` (a slice: a view; a tensor: gathered) along `dim`."""
    if isinstance(index, slice):
        return x.narrow(dim, index.start, index.stop - index.start)
    return x.index_select(dim, index)
