"""The Triton kernels of `attnzoo._triton_weights` (imported only where Triton is installed).

Shapes and strides: q (Z, H, L, D), k (Z, H, S, D), mask (Z, H, L, S) with zero strides
where it broadcasts (bool stored as uint8: nonzero = may attend; or float, added),
lse (Z, H, L) float32, out (Z, L, S).
"""

import triton
import triton.language as tl

__all__ = ["lse_kernel", "mean_kernel"]


@triton.jit
def _scores(Q, sqz, sqh, sql, sqd, K, skz, skh, skn, skd, M, smz, smh, sml, smn, z, h, offs_m, offs_n, L, S, D,
            scale, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
            BLOCK_D: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of scale·q kᵀ + mask for head h, -inf where a key is hidden."""
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + z * sqz + h * sqh + offs_m[:, None] * sql + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < L) & (offs_d[None, :] < D), other=0.0)
    k = tl.load(K + z * skz + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                mask=(offs_n[None, :] < S) & (offs_d[:, None] < D), other=0.0)
    if IEEE:
        s = tl.dot(q, k, input_precision="ieee", out_dtype=tl.float32)
    else:
        s = tl.dot(q, k, out_dtype=tl.float32)
    s = s * scale
    inside = (offs_m[:, None] < L) & (offs_n[None, :] < S)
    if HAS_MASK:
        mv = tl.load(M + z * smz + h * smh + offs_m[:, None] * sml + offs_n[None, :] * smn, mask=inside, other=0)
        if MASK_BOOL:
            s = tl.where(mv != 0, s, float("-inf"))
        else:
            s = s + mv.to(tl.float32)
    keep = offs_n[None, :] < S
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None])
    return tl.where(keep, s, float("-inf"))

@triton.jit
def lse_kernel(Q, sqz, sqh, sql, sqd, K, skz, skh, skn, skd, M, smz, smh, sml, smn, LSE, slz, slh, sll,
               H, L, S, D, scale, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr,
               IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    zh, pid_m = tl.program_id(0), tl.program_id(1)
    z, h = zh // H, zh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp(score - max)
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)  # later keys are in every row's future
    for start in range(0, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s = _scores(Q, sqz, sqh, sql, sqd, K, skz, skh, skn, skd, M, smz, smh, sml, smn, z, h, offs_m, offs_n,
                    L, S, D, scale, HAS_MASK, MASK_BOOL, CAUSAL, IEEE, BLOCK_D)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
        m_i = m_new
    lse = tl.where(m_i == float("-inf"), float("-inf"), m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)))
    tl.store(LSE + z * slz + h * slh + offs_m * sll, lse, mask=offs_m < L)

@triton.jit
def mean_kernel(Q, sqz, sqh, sql, sqd, K, skz, skh, skn, skd, M, smz, smh, sml, smn, LSE, slz, slh, sll,
                OUT, soz, sol, son, H, L, S, D, scale, inv_h, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
                CAUSAL: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr):
    pid_n, pid_m, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    heads = H
    if CAUSAL:  # a tile wholly in the future of its rows: zeros, no work
        heads = tl.where(pid_n * BLOCK_N > pid_m * BLOCK_M + BLOCK_M - 1, 0, H)
    for h in range(0, heads):
        s = _scores(Q, sqz, sqh, sql, sqd, K, skz, skh, skn, skd, M, smz, smh, sml, smn, z, h, offs_m, offs_n,
                    L, S, D, scale, HAS_MASK, MASK_BOOL, CAUSAL, IEEE, BLOCK_D)
        lse = tl.load(LSE + z * slz + h * slh + offs_m * sll, mask=offs_m < L, other=float("-inf"))
        lse_safe = tl.where(lse == float("-inf"), 0.0, lse)  # an empty row: all its scores are -inf
        acc += tl.exp(s - lse_safe[:, None])
    tl.store(OUT + z * soz + offs_m[:, None] * sol + offs_n[None, :] * son,
             (acc * inv_h).to(OUT.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_n[None, :] < S))
