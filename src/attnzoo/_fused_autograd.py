"""torch's fused attention kernel with a backward that can itself be differentiated.

torch's CPU flash kernel (and the CUDA kernels) have a fused backward with no derivative
of its own, so double backward (gradient penalties, MAML) fails inside torch. Here the
kernel runs inside a custom ``autograd.Function``:

* normal backward (``create_graph=False``): the kernel's own fused backward, exactly what
  a plain ``F.scaled_dot_product_attention`` call would run. On CPU the flash kernel and
  its backward are called directly (torch's own backend choice decides when: where torch
  picks its math backend, that is already twice differentiable and used as is); on other
  devices the forward records the kernel's graph and the backward replays it. The cost is
  the Python Function call, a fixed ~40 µs per attention call on CPU;
* ``create_graph=True``: the gradient is recomputed from the formula in
  `math_attention`, which autograd differentiates again. Dropout cannot be replayed
  there, so that case raises one clear error.

The math path also serves every case the fused kernel cannot: empty sizes, ``torch.func``
transforms (``vmap``, ``jvp``, ``grad``) and forward-mode AD. Under ``torch.compile``,
``torch.export``, FX and ``jit.trace`` the plain kernel call is used (they do their own
autograd and need no Python-level Function).

Shapes: q (*, L, E), k (*, S, E), v (*, S, Ev), mask broadcasting to (*, L, S); the mask
has the functional polarity (bool True = may attend, float added) and no fully masked rows
(the caller opens those and zeroes them afterwards).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

__all__ = ["fused_attention", "math_attention", "needs_math", "wants_grad"]


def math_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, causal: bool, scale: float | None
) -> tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ · scale + mask) V with plain, twice-differentiable ops -> (out, weights).

    Rows that may attend to nothing give 0 weights and 0 output; any size may be 0.
    """
    L, S = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (*, L, S)
    allowed = torch.ones(L, S, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()  # query i sees keys 0..i
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        scores = scores + mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    empty = scores.isneginf().all(dim=-1, keepdim=True)  # (*, L, 1) rows that see nothing
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    if p > 0.0:
        weights = F.dropout(weights, p=p)
    return weights @ v, weights  # (*, L, Ev), (*, L, S)


def needs_math(*tensors: Tensor | None) -> bool:
    """True where the fused kernel cannot serve: a size 0, torch.func transforms, forward AD."""
    if not torch.jit.is_tracing() and any(t is not None and t.numel() == 0 for t in tensors):  # traced: no bools
        return True
    if torch._C._are_functorch_transforms_active():
        return True
    return forward_ad._current_level >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors
    )


def wants_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records through these tensors here (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fused_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, causal: bool, scale: float | None
) -> Tensor:
    """``F.scaled_dot_product_attention``, twice differentiable where autograd is recording."""
    if (
        not wants_grad(q, k, v, mask)
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    ):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=scale)
    if q.device.type == "cpu":
        if torch._fused_sdp_choice(q, k, v, mask, p, causal, scale=scale) != _FLASH:
            # torch's CPU math backend: plain differentiable ops, twice differentiable as is
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=scale)
        if mask is not None and mask.dtype == torch.bool:  # what F.sdpa does before the kernel
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        return _CpuFlashAttention.apply(q, k, v, mask, causal, scale)
    return _FusedAttention.apply(q, k, v, mask, p, causal, scale)


_FLASH = int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)


class _CpuFlashAttention(torch.autograd.Function):
    """torch's CPU flash kernel and its fused backward, called directly (no dropout, and no
    mask gradient: torch picks its math backend for those)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale):  # type: ignore[override]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scale)
        ctx.args = (causal, scale)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, mask, out, lse = ctx.saved_tensors
        causal, scale = ctx.args
        if torch.is_grad_enabled():  # create_graph=True: differentiate the formula instead
            inputs = [t for t, n in zip((q, k, v), ctx.needs_input_grad) if n]
            recomputed = math_attention(q, k, v, mask, 0.0, causal, scale)[0]
            grads = iter(torch.autograd.grad(recomputed, inputs, grad_out, create_graph=True))
            return (*(next(grads) if n else None for n in ctx.needs_input_grad[:3]), None, None, None)
        gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, k, v, out, lse, 0.0, causal, attn_mask=mask, scale=scale)
        return gq, gk, gv, None, None, None


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, p, causal, scale):  # type: ignore[override]
        # Record the kernel's own graph on detached inputs: its backward is the fused one.
        inner = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in (q, k, v, mask)]
        with torch.enable_grad():
            out = F.scaled_dot_product_attention(*inner[:3], attn_mask=inner[3], dropout_p=p, is_causal=causal,
                                                 scale=scale)
        ctx.leaf_index = [i for i, t in enumerate(inner) if t is not None and t.requires_grad]
        ctx.args = (p, causal, scale)
        # Saved, not kept as attributes: the inner graph lives exactly as long as the outer
        # one (freed by a backward without retain_graph, kept for a retained second one).
        ctx.save_for_backward(q, k, v, mask, out, *(inner[i] for i in ctx.leaf_index))
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, mask, out, *leaves = ctx.saved_tensors
        grads = [None] * 4
        if not torch.is_grad_enabled():  # the normal backward: the kernel's fused one
            for i, g in zip(ctx.leaf_index, _inner_backward(out, leaves, grad_out)):
                grads[i] = g
            return (*grads, None, None, None)
        p, causal, scale = ctx.args  # create_graph=True: differentiate the formula instead
        if p > 0.0:
            raise RuntimeError(
                "double backward (create_graph=True) through attention with dropout is not supported: "
                "the fused kernel's dropout cannot be replayed; use dropout=0.0 or module.eval()"
            )
        inputs = (q, k, v, mask)
        recomputed = math_attention(q, k, v, mask, 0.0, causal, scale)[0]
        wanted = [inputs[i] for i in ctx.leaf_index]
        for i, g in zip(ctx.leaf_index, torch.autograd.grad(recomputed, wanted, grad_out, create_graph=True)):
            grads[i] = g
        return (*grads, None, None, None)


def _inner_backward(out: Tensor, leaves: list[Tensor], grad_out: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients of ``out`` w.r.t. ``leaves`` through the recorded kernel graph (kept).

    When the kernel is one autograd node fed straight by the leaves (the fused kernels),
    that node is called directly: the same backward kernel, without a second engine run.
    Inside ``torch.autograd.grad(..., inputs=...)`` a node called so computes nothing (the
    running graph task does not list it); then the engine runs on the inner graph.
    """
    node = out.grad_fn
    feeds = node.next_functions
    if all(f is None or hasattr(f, "variable") for f, _ in feeds):
        res = node(grad_out)
        res = res if isinstance(res, tuple) else (res,)
        by_leaf = {id(f.variable): g for (f, _), g in zip(feeds, res) if f is not None}
        if all(by_leaf.get(id(t)) is not None for t in leaves):
            return tuple(by_leaf[id(t)] for t in leaves)
    return torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
