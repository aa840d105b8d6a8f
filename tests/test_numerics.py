"""Non-finite values at masked positions, half precision, empty sizes, peer-suite divergences."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attnzoo as az
from attnzoo.functional import attention_reference, scaled_dot_product_attention

D = torch.float64


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_non_finite_at_padded_keys_never_reaches_valid_rows(bad, mask_kind):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    pad = torch.zeros(2, 1, 1, 5, dtype=torch.bool)
    pad[1, ..., 3:] = True  # sample 1: keys 3, 4 are padding
    k[1, :, 3:], v[1, :, 3:] = bad, bad
    mask = ~pad if mask_kind == "bool" else torch.zeros(pad.shape).masked_fill(pad, -math.inf)
    expected = attention_reference(q[1:], k[1:, :, :3], v[1:, :, :3])  # padding cut off
    for need_weights in (False, True):
        out = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights)
        out = out[0] if need_weights else out
        torch.testing.assert_close(out[1:], expected)
    # through the module: NaN in padded input positions
    mha = az.MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8, generator=g)
    x[1, 3:] = bad
    key_padding = pad.view(2, 5)
    out, _ = mha(x, key_padding_mask=key_padding)
    torch.testing.assert_close(out[1, :3], mha(x[1:, :3])[0][0])


def test_half_float_mask_at_finfo_min_with_dropout_is_never_nan():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 16).half() * 4 for _ in range(3))
    mask = torch.zeros(6, 6, dtype=torch.half)
    mask[:, 3:] = torch.finfo(torch.half).min
    mask[0] = torch.finfo(torch.half).min  # a row masked everywhere with finfo.min
    out = scaled_dot_product_attention(q, k, v, mask, dropout_p=0.3)
    assert torch.isfinite(out).all()
    mha = az.MultiHeadAttention(16, 2, dropout=0.3, dtype=torch.half).train()
    out, _ = mha(torch.randn(2, 6, 16).half() * 4, attn_mask=mask)
    assert torch.isfinite(out).all()


@settings(max_examples=30, deadline=None)
@given(L=st.integers(1, 5), S=st.integers(1, 5), big=st.floats(1.0, 60.0), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["none", "bool", "finfo_min"]))
def test_half_output_finite_wherever_the_float64_formula_is(L, S, big, seed, kind):
    g = torch.Generator().manual_seed(seed)
    q, k, v = ((torch.randn(1, 2, n, 16, generator=g, dtype=D) * big).half() for n in (L, S, S))
    mask = None
    if kind == "bool":
        mask = torch.rand(L, S, generator=g) > 0.5
    elif kind == "finfo_min":
        mask = torch.zeros(L, S, dtype=torch.half).masked_fill(torch.rand(L, S, generator=g) > 0.5,
                                                               torch.finfo(torch.half).min)
    ref = attention_reference(q.double(), k.double(), v.double(), None if mask is None else mask.double()
                              if mask.is_floating_point() else mask)
    out = scaled_dot_product_attention(q, k, v, mask)
    finite = torch.isfinite(ref)
    assert torch.isfinite(out[finite]).all()
    torch.testing.assert_close(out.double()[finite], ref[finite], atol=2e-2 * big, rtol=2e-2)


# ---------------------------------------------------------------------------- empty sizes
@pytest.mark.parametrize("B, L, S", [(2, 0, 4), (2, 3, 0), (0, 3, 4), (2, 0, 0)])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_empty_sizes_like_torch(B, L, S, need_weights, grad):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(16, 2, batch_first=True)
    nn.init.normal_(theirs.out_proj.bias)
    ours = az.MultiHeadAttention.from_torch(theirs)
    q = torch.randn(B, L, 16, requires_grad=grad)
    kv = torch.randn(B, S, 16, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        expected, exp_w = theirs(q, kv, kv, need_weights=need_weights)
        got, w = ours(q, kv, kv, need_weights=need_weights)
        qh, kh = q.view(B, L, 2, 8).transpose(1, 2), kv.view(B, S, 2, 8).transpose(1, 2)  # (B, 2, T, 8)
        f_out = scaled_dot_product_attention(qh, kh, kh, need_weights=need_weights)
    torch.testing.assert_close(got, expected)
    assert (w is None) == (exp_w is None) and (w is None or (w.shape == exp_w.shape and torch.equal(w, exp_w)))
    f_ref = F.scaled_dot_product_attention(qh, kh, kh)
    torch.testing.assert_close(f_out[0] if need_weights else f_out, f_ref)
    if grad:
        (got.sum() + (f_out[0] if need_weights else f_out).sum()).backward()
        assert q.grad.shape == q.shape and (q.grad == 0).all() if S == 0 else q.grad is not None


# ------------------------------------------------------------------------ peer divergences
def test_unbatched_key_padding_mask_error_names_the_given_shape():
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(S,\) = \(4,\) .*got \(1, 8\)"):
        az.MultiHeadAttention(4, 4)(torch.randn(4, 4), key_padding_mask=torch.zeros(1, 8, dtype=torch.bool))


@pytest.mark.parametrize("q_shape, kv_shape", [((4, 3, 8), (4, 4, 6, 8)), ((3, 8), (4, 6, 8)),
                                               ((5, 1, 3, 8), (1, 4, 6, 8)), ((1, 3, 8), (2, 4, 6, 8))])
def test_batch_dims_broadcast_like_torch(q_shape, kv_shape):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(q_shape, generator=g, dtype=D)
    k, v = torch.randn(kv_shape, generator=g, dtype=D), torch.randn(kv_shape, generator=g, dtype=D)
    mask = torch.rand(3, 6, generator=g) > 0.3
    mask[:, 0] = True
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out, w = scaled_dot_product_attention(q, k, v, mask, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, w @ v.expand(*w.shape[:-2], *v.shape[-2:]))


def test_batch_dims_that_do_not_broadcast_are_refused():
    with pytest.raises(ValueError, match=r"batch dims .* must broadcast, got query \(2, 3, 8\), key \(4, 6, 8\)"):
        scaled_dot_product_attention(torch.randn(2, 3, 8), torch.randn(4, 6, 8), torch.randn(4, 6, 8))


def test_bias_dtype_differing_from_weights_is_a_clear_error():
    mha = az.MultiHeadAttention(8, 2)
    mha.in_proj_bias.data = mha.in_proj_bias.data.double()
    with pytest.raises(TypeError, match=r"parameters must share one dtype, got out_proj.weight torch.float32 "
                                        r"and in_proj_bias torch.float64"):
        mha(torch.randn(2, 3, 8))
