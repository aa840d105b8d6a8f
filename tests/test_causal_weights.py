"""Causal need_weights in blocks of query rows: each block scores only the keys its rows may see.

The block of rows [r0, r1) computes scores against keys [0, min(S, r1)) (top-left causal
alignment: query i sees keys 0..i); the rest of its weights rows is 0 and its output comes
from those keys alone. Checked against the float64 formula on blocks of three rows.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo._weights as AW
import attnzoo.functional as AF
from attnzoo.functional import attention_reference, attention_weights, scaled_dot_product_attention

D = torch.float64
B, H, E, EV = 2, 3, 4, 5
ROWS = 3  # query rows per block, where a row sees all S keys


def qkv(L, S, dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, E, generator=g, dtype=D)
    k = torch.randn(B, H, S, E, generator=g, dtype=D)
    v = torch.randn(B, H, S, EV, generator=g, dtype=D)
    return tuple(t.to(dtype) for t in (q, k, v))


def mask_of(kind, L, S, dtype):
    if kind is None:
        return None
    allowed = torch.rand(B, 1, L, S, generator=torch.Generator().manual_seed(3)) > 0.4
    allowed[1, 0, 4] = False  # a row with nothing to attend to
    allowed[0, 0, 5, :3] = False  # a row whose causal keys are all masked (when it sees no more than 0..2)
    if kind == "bool":
        return allowed
    return torch.randn(allowed.shape, generator=torch.Generator().manual_seed(5), dtype=D).to(dtype).masked_fill(
        ~allowed, -math.inf)


@pytest.fixture
def small_blocks(monkeypatch):
    """Every call takes the blocked pass, with at most B·H·ROWS·S scores a block."""
    monkeypatch.setattr(AW, "_SHARED_MAX_SCORES", {})
    monkeypatch.setattr(AW, "_SHARED_DEFAULT", 0)

    def rows_of(S):
        monkeypatch.setattr(AW, "_BLOCK_ELEMENTS", {"cpu": B * H * ROWS * S})
    return rows_of


@pytest.mark.parametrize("L,S", [(10, 10), (7, 12), (11, 6)])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype,tol", [(D, 1e-12), (torch.bfloat16, 2e-2)])
def test_causal_blocks_equal_the_float64_formula(small_blocks, L, S, mask_kind, average, grad, dtype, tol):
    small_blocks(S)
    q, k, v = (t.requires_grad_(grad) for t in qkv(L, S, dtype))
    mask = mask_of(mask_kind, L, S, dtype)
    with torch.set_grad_enabled(grad):
        out, w = AF.sdpa(q, k, v, mask, is_causal=True, need_weights=True,
                         average_heads=average)
        alone = attention_weights(q, k, mask, True, average_heads=average)  # the pass without values
    ref_out, ref_w = attention_reference(*(t.detach().double() for t in (q, k, v)),
                                         None if mask is None else mask.double() if mask.is_floating_point() else mask,
                                         is_causal=True, need_weights=True)
    ref_w = ref_w.mean(-3) if average else ref_w
    assert out.dtype == w.dtype == alone.dtype == dtype
    assert w.shape == ref_w.shape and out.requires_grad == w.requires_grad == grad
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(w.double(), ref_w, atol=tol, rtol=0)
    torch.testing.assert_close(alone.double(), ref_w, atol=tol, rtol=0)
    later = torch.ones(L, S, dtype=torch.bool).triu(1)  # query i sees keys 0..i
    assert (w[..., later] == 0).all()  # exactly 0, as written
    if mask_kind is not None:
        assert out[1, :, 4].abs().max() == 0 and w[1, ..., 4, :].abs().max() == 0  # the empty row
    if grad:
        grads = torch.autograd.grad((out.float().sum() + w.float().sum()), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)


def test_causal_gqa_blocks_equal_the_formula(small_blocks):
    small_blocks(9)
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 6, 8, E, generator=g, dtype=D), *torch.randn(2, 1, 2, 9, E, generator=g, dtype=D)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, need_weights=True)
    ref_out, ref_w = attention_reference(q, k, v, is_causal=True, enable_gqa=True, need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool"])
@pytest.mark.parametrize("grad", [False, True])
def test_each_block_scores_only_the_keys_up_to_its_last_row(small_blocks, monkeypatch, average, mask_kind, grad):
    """The score matmuls of the pass cover the causal staircase, not the L x S rectangle."""
    L, S = 10, 12
    small_blocks(S)
    q, k, v = (t.requires_grad_(grad) for t in qkv(L, S))
    mask = mask_of(mask_kind, L, S, D)
    shapes = []
    real = torch.matmul

    def spy(a, b, **kw):
        r = real(a, b, **kw)
        if a.size(-1) == E:  # (*, R_blk, E) @ (*, E, s1): scores
            shapes.append(tuple(r.shape[-2:]))
        return r

    monkeypatch.setattr(torch, "matmul", spy)
    with torch.set_grad_enabled(grad):
        AF.sdpa(q, k, v, mask, is_causal=True, need_weights=True, average_heads=average)
    ends = [sum(r for r, _ in shapes[: i + 1]) for i in range(len(shapes))]  # each block's last row + 1
    assert ends[-1] == L and len(shapes) > 1
    assert [s1 for _, s1 in shapes] == [min(S, b1) for b1 in ends]  # keys [0, b1) only
    assert all(r * s1 <= ROWS * S for r, s1 in shapes)  # no block above the budget
    assert shapes[0][0] > ROWS  # early blocks, seeing fewer keys, take more rows


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "float"])
def test_nan_in_later_keys_and_values_stays_out_of_earlier_blocks(small_blocks, average, mask_kind):
    """NaN/Inf at keys a block's rows cannot see never reaches their output or weights
    (0 × NaN = NaN had the block multiplied its zero weights by those values)."""
    L = S = 12
    small_blocks(S)
    q, k, v = qkv(L, S)
    mask = mask_of(mask_kind, L, S, D)
    bad_k, bad_v = k.clone(), v.clone()
    bad_k[..., 6:, 0], bad_v[..., 6:, :] = math.inf, math.nan  # keys seen from row 6 on: blocks [6,9), [9,12)
    with torch.inference_mode():
        out, w = AF.sdpa(q, bad_k, bad_v, mask, is_causal=True, need_weights=True, average_heads=average)
    ref_out, ref_w = attention_reference(q, k, v, mask, is_causal=True, need_weights=True)
    ref_w = ref_w.mean(-3) if average else ref_w
    torch.testing.assert_close(out[..., :6, :], ref_out[..., :6, :], atol=1e-12, rtol=0)
    torch.testing.assert_close(w[..., :6, :], ref_w[..., :6, :], atol=1e-12, rtol=0)
    if mask is None:
        assert out[..., 6:, :].isnan().all()  # rows that do see them (the formula gives NaN too)


def test_fused_output_keeps_the_fused_kernel_output_with_causal_blocks(small_blocks):
    """Inside fused_output (the recorder) the output is torch's kernel bit for bit; the
    weights still come from the causal blocks and equal the formula."""
    small_blocks(9)
    q, k, v = (t.float() for t in qkv(9, 9))
    with AF.fused_output():
        out, w = scaled_dot_product_attention(q, k, v, is_causal=True, need_weights=True)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    _, ref_w = attention_reference(*(t.double() for t in (q, k, v)), is_causal=True, need_weights=True)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-6, rtol=0)
