"""Head-averaged attention weights on a GPU in two Triton kernels, never storing per-head scores.

``need_weights=True`` with ``average_attn_weights=True`` asks for

    mean over heads h of softmax(Q_h K_hᵀ · scale + mask)          (*, L, S)

torch computes all B·H·L·S per-head weights first. Here:

1. ``_lse_kernel``, one program per (block of query rows, batch·head): the row-wise
   log-sum-exp of the scores, with an online max as in flash attention (one pass over
   the keys, nothing stored but (*, H, L) floats).
2. ``_mean_kernel``, one program per (block of keys, block of query rows, batch): for
   each head, the score tile again, ``exp(score - lse)``, summed over the heads in
   registers; the tile of the mean is written once.

So the work is two score GEMMs (on tensor cores for half inputs) and the bytes are the
inputs plus the (*, L, S) result. Scores, exponentials and sums are float32; float32
inputs use exact float32 products (``input_precision="ieee"``), not TF32.

Masks have the functional polarity (bool True = may attend; float added) and any shape
that broadcasts to (*, H, L, S); ``causal`` is top-left aligned. Rows with nothing to
attend to give 0. No autograd: callers use this only where no gradient is needed.
Shapes: q (*, H, L, D), k (*, H, S, D) (GQA already expanded).
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import Tensor

__all__ = ["available", "disable", "head_mean_weights"]

BLOCK_M, BLOCK_N = 64, 64
_MAX_GRID_Z = 65535


@functools.cache
def _triton() -> tuple | None:
    """The two kernels, or None where Triton does not import (it is an optional dependency)."""
    try:
        from ._triton_kernels import lse_kernel, mean_kernel
    except Exception:  # not installed, or no working backend
        return None
    return lse_kernel, mean_kernel


_disabled: list[str] = []  # why the kernels failed once, if they did


def available(q: Tensor) -> bool:
    """Whether the kernels serve ``q``: a CUDA float16/bfloat16 tensor, Triton installed.

    Not float32: with exact float32 products the two score passes were slower on an H100
    than the routes they replace (docs/performance.md, the GPU section); the kernels still
    compute float32 correctly when called directly.
    """
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not _disabled and _triton() is not None


def disable(exc: BaseException) -> None:
    """Stop using the kernels in this process (they failed to compile or run here), with one warning."""
    _disabled.append(f"{type(exc).__name__}: {exc}")
    warnings.warn(f"attnzoo: the Triton weights kernels failed ({_disabled[0][:300]}); "
                  "need_weights uses the blocked path from now on", RuntimeWarning, stacklevel=3)


def head_mean_weights(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    """mean_h softmax(q_h k_hᵀ · scale + mask): q (*, H, L, D), k (*, H, S, D) -> (*, L, S) in q's dtype."""
    kernels = _triton()
    if kernels is None:
        raise RuntimeError("head_mean_weights needs Triton (pip install triton)")
    lse_kernel, mean_kernel = kernels
    *batch, H, L, D = q.shape
    S = k.size(-2)
    Z = math.prod(batch)
    q4, k4 = q.reshape(Z, H, L, D), k.reshape(Z, H, S, D)  # views when the layout allows
    if mask is not None:
        mask = mask.expand(*batch, H, L, S).reshape(Z, H, L, S)  # zero strides where it broadcasts
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
    m_args = (mask, *mask.stride()) if mask is not None else (q4, 0, 0, 0, 0)  # a dummy pointer
    block_d = max(16, _next_pow2(D))
    flags = {"HAS_MASK": mask is not None, "MASK_BOOL": mask is not None and mask.dtype == torch.uint8,
             "CAUSAL": causal, "IEEE": q.dtype in (torch.float32, torch.float64),
             "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_D": block_d}
    lse = torch.empty(Z, H, L, device=q.device, dtype=torch.float32)  # (Z, H, L)
    lse_kernel[(Z * H, _cdiv(L, BLOCK_M))](
        q4, *q4.stride(), k4, *k4.stride(), *m_args, lse, *lse.stride(), H, L, S, D, scale, **flags)
    out = torch.empty(Z, L, S, device=q.device, dtype=q.dtype)  # (Z, L, S)
    for z0 in range(0, Z, _MAX_GRID_Z):  # a grid's third dimension stops at 65535
        z1 = min(Z, z0 + _MAX_GRID_Z)
        m_part = m_args if mask is None else (mask[z0:z1], *m_args[1:])
        mean_kernel[(_cdiv(S, BLOCK_N), _cdiv(L, BLOCK_M), z1 - z0)](
            q4[z0:z1], *q4.stride(), k4[z0:z1], *k4.stride(), *m_part, lse[z0:z1], *lse.stride(),
            out[z0:z1], *out.stride(), H, L, S, D, scale, 1.0 / H, **flags)
    return out.view(*batch, L, S)


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b): the number of blocks of size b that cover a."""
    return -(-a // b)


def _next_pow2(n: int) -> int:
    """The smallest power of two >= n (a block dimension for tl.arange)."""
    return 1 << max(0, n - 1).bit_length()
