"""MultiHeadAttention, SelfAttention, CrossAttention: parity with torch, gradients, errors."""

import random

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.functional import attention_reference

D = torch.float64


def _random_case(rng: random.Random):
    E = rng.choice([8, 12, 16])
    H = rng.choice([h for h in (1, 2, 4) if E % h == 0])
    kdim, vdim = rng.choice([None, 5, E]), rng.choice([None, 7, E])
    bias, batch_first = rng.random() < 0.5, rng.random() < 0.5
    torch_mha = nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, bias=bias, batch_first=batch_first, dtype=D)
    B, L, S = rng.randint(1, 3), rng.randint(1, 6), rng.randint(1, 6)
    q = torch.randn(B, L, E, dtype=D)
    self_attn = torch_mha._qkv_same_embed_dim and rng.random() < 0.5
    if self_attn:
        k = v = q
        S = L
    else:
        k, v = torch.randn(B, S, torch_mha.kdim, dtype=D), torch.randn(B, S, torch_mha.vdim, dtype=D)
    kpm = attn_mask = None
    r = rng.random()
    if r < 0.35:
        kpm = torch.rand(B, S) < 0.3
        kpm[:, 0] = False  # torch returns NaN for fully padded rows; compare where it is defined
    elif r < 0.55:
        kpm = torch.randn(B, S, dtype=D)
    r = rng.random()
    if r < 0.3:
        attn_mask = torch.rand(L, S) < 0.3
        attn_mask[:, 0] = False
    elif r < 0.5:
        attn_mask = torch.randn(B * H, L, S, dtype=D)
    if kpm is not None and attn_mask is not None and kpm.dtype != attn_mask.dtype:
        attn_mask = None  # torch deprecates mixing mask types
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        if self_attn:
            k = v = q
    return torch_mha, (q, k, v), {"key_padding_mask": kpm, "attn_mask": attn_mask}


@pytest.mark.parametrize("seed", range(8))
def test_from_torch_parity_random_configurations(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for _ in range(25):
        torch_mha, args, masks = _random_case(rng)
        ours = az.MultiHeadAttention.from_torch(torch_mha)
        for average in (True, False):
            o1, w1 = torch_mha(*args, **masks, need_weights=True, average_attn_weights=average)
            o2, w2 = ours(*args, **masks, need_weights=True, average_attn_weights=average)
            torch.testing.assert_close(o2, o1, atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(w2, w1, atol=1e-10, rtol=1e-10)
        o3, w3 = ours(*args, **masks)
        assert w3 is None
        torch.testing.assert_close(o3, o1, atol=1e-10, rtol=1e-10)


def test_from_torch_eval_fast_path_and_unbatched():
    torch_mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = az.MultiHeadAttention.from_torch(torch_mha)
    x = torch.randn(3, 10, 16)
    with torch.inference_mode():
        expected, _ = torch_mha(x, x, x, need_weights=False)
        got, _ = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    o1, w1 = torch_mha(x[0], x[0], x[0])
    o2, w2 = ours(x[0], need_weights=True)
    assert o2.shape == (10, 16) and w2.shape == (10, 10)
    torch.testing.assert_close(o2, o1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2, w1, atol=1e-6, rtol=1e-5)


def test_state_dicts_load_both_ways():
    ours = az.MultiHeadAttention(12, 3, kdim=5, vdim=7)
    theirs = nn.MultiheadAttention(12, 3, kdim=5, vdim=7, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    q, k, v = torch.randn(2, 4, 12), torch.randn(2, 6, 5), torch.randn(2, 6, 7)
    torch.testing.assert_close(ours(q, k, v)[0], theirs(q, k, v)[0])


def test_from_torch_rejects_what_it_cannot_represent():
    with pytest.raises(ValueError, match="add_bias_kv"):
        az.MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_zero_attn"):
        az.MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))
    with pytest.raises(TypeError, match="MultiheadAttention"):
        az.MultiHeadAttention.from_torch(nn.Linear(8, 8))


def _manual_mha(m: az.MultiHeadAttention, q, k, v, allowed=None, is_causal=False):
    """Per-head projections, the formula, the output projection: spelled out."""
    E, H, Hk, hs = m.embed_dim, m.num_heads, m.num_kv_heads, m.head_dim
    sizes = [E, Hk * hs, Hk * hs]
    if m.in_proj_weight is not None:
        wq, wk, wv = m.in_proj_weight.split(sizes)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    b = m.in_proj_bias if m.in_proj_bias is not None else torch.zeros(sum(sizes), dtype=wq.dtype)
    bq, bk, bv = b.split(sizes)
    B, L, S = q.size(0), q.size(1), k.size(1)
    qh = (q @ wq.T + bq).view(B, L, H, hs).transpose(1, 2)
    kh = (k @ wk.T + bk).view(B, S, Hk, hs).transpose(1, 2)
    vh = (v @ wv.T + bv).view(B, S, Hk, hs).transpose(1, 2)
    out, w = attention_reference(qh, kh, vh, allowed, is_causal=is_causal, enable_gqa=True, need_weights=True)
    return m.out_proj(out.transpose(1, 2).reshape(B, L, E)), w


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_grouped_query_attention_matches_formula(num_kv_heads):
    torch.manual_seed(0)
    m = az.MultiHeadAttention(16, 4, num_kv_heads=num_kv_heads, dtype=D)
    assert m.in_proj_weight.shape == (16 + 2 * 4 * num_kv_heads, 16)
    x = torch.randn(2, 5, 16, dtype=D)
    kpm = torch.tensor([[False] * 5, [False, False, True, True, True]])
    out, w = m(x, key_padding_mask=kpm, is_causal=True, need_weights=True, average_attn_weights=False)
    ref_out, ref_w = _manual_mha(m, x, x, x, ~kpm[:, None, None, :], is_causal=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)


def test_fully_padded_sample_gives_zeros_not_nan():
    m = az.MultiHeadAttention(8, 2, bias=False, dtype=D)
    x = torch.randn(2, 4, 8, dtype=D, requires_grad=True)
    kpm = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out, w = m(x, key_padding_mask=kpm, need_weights=True)
    assert torch.isfinite(out).all() and out[1].abs().max() == 0 and w[1].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # torch's own module returns NaN here, which is what attnzoo fixes
    theirs = nn.MultiheadAttention(8, 2, bias=False, batch_first=True, dtype=D)
    assert torch.isnan(theirs(x, x, x, key_padding_mask=kpm)[0][1]).all()


def test_causal_with_attn_mask_and_weights():
    """Both at once (torch's module refuses is_causal without a mask or with need_weights)."""
    torch.manual_seed(1)
    m = az.MultiHeadAttention(8, 2, dtype=D)
    x = torch.randn(2, 6, 8, dtype=D)
    blocked = torch.rand(6, 6) < 0.3
    out, w = m(x, attn_mask=blocked, is_causal=True, need_weights=True, average_attn_weights=False)
    ref_out, ref_w = _manual_mha(m, x, x, x, ~blocked, is_causal=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    assert (w.triu(1) == 0).all()


def test_weights_for_rows():
    m = az.MultiHeadAttention(8, 2, dtype=D)
    x = torch.randn(1, 20, 8, dtype=D)
    _, full = m(x, is_causal=True, need_weights=True)
    _, rows = m(x, is_causal=True, need_weights=True, weights_for=torch.tensor([19, 3]))
    torch.testing.assert_close(rows, full[:, [19, 3]])


def test_self_and_cross_wrappers():
    torch.manual_seed(2)
    sa = az.SelfAttention(8, num_heads=2, dtype=D)
    x = torch.randn(2, 5, 8, dtype=D)
    torch.testing.assert_close(sa(x, is_causal=True)[0], az.MultiHeadAttention.forward(sa, x, x, x, is_causal=True)[0])
    ca = az.CrossAttention(8, context_dim=6, num_heads=2, dtype=D)
    ctx = torch.randn(2, 7, 6, dtype=D)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    out, w = ca(x, ctx, context_padding_mask=pad, need_weights=True)
    ref_out, _ = _manual_mha(ca, x, ctx, ctx, ~pad[:, None, None, :])
    torch.testing.assert_close(out, ref_out)
    assert w.shape == (2, 5, 7) and (w[0, :, 5:] == 0).all()


@pytest.mark.parametrize("kv_heads", [None, 1])
def test_gradcheck(kv_heads):
    torch.manual_seed(3)
    m = az.MultiHeadAttention(4, 2, num_kv_heads=kv_heads, dtype=D)
    q = torch.randn(2, 3, 4, dtype=D, requires_grad=True)
    k = torch.randn(2, 4, 4, dtype=D, requires_grad=True)
    kpm = torch.tensor([[False, False, True, False], [True, True, True, True]])
    torch.autograd.gradcheck(
        lambda q, k, *p: m(q, k, key_padding_mask=kpm, need_weights=True), (q, k, *m.parameters())
    )
    ca = az.CrossAttention(4, context_dim=3, num_heads=2, dtype=D)
    ctx = torch.randn(2, 4, 3, dtype=D, requires_grad=True)
    torch.autograd.gradcheck(lambda q, c: ca(q, c, need_weights=True), (q, ctx))


def test_dropout_active_only_in_training():
    m = az.MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 6, 8)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])
    m.train()
    torch.manual_seed(0)
    a = m(x)[0]
    torch.manual_seed(1)
    assert not torch.equal(a, m(x)[0])


@pytest.mark.parametrize(
    "build, call, exc, match",
    [
        (lambda: az.MultiHeadAttention(10, 3), None, ValueError, "embed_dim must be divisible by num_heads"),
        (lambda: az.MultiHeadAttention(8, 4, num_kv_heads=3), None, ValueError, "num_kv_heads"),
        (lambda: az.MultiHeadAttention(0, 1), None, ValueError, "embed_dim"),
        (lambda: az.MultiHeadAttention(8, 2, dropout=1.5), None, ValueError, "dropout"),
        (None, lambda m: m(torch.randn(2, 3, 5)), ValueError, "embed_dim=8"),
        (None, lambda m: m(torch.randn(2, 3, 4, 8)), ValueError, "query must be 2-D or 3-D"),
        (None, lambda m: m(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 8)), ValueError,
         "key and value"),
        (None, lambda m: m(torch.randn(2, 3, 8), torch.randn(3, 4, 8)), ValueError, "batch size"),
        (None, lambda m: m(torch.randn(2, 3, 8, dtype=D)), TypeError, "dtype"),
        (None, lambda m: m(torch.randn(2, 3, 8), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), ValueError,
         r"key_padding_mask must have shape \(B, S\) = \(2, 3\)"),
        (None, lambda m: m(torch.randn(2, 3, 8), key_padding_mask=torch.zeros(2, 3, dtype=torch.long)), TypeError,
         "key_padding_mask"),
        (None, lambda m: m(torch.randn(2, 3, 8), attn_mask=torch.zeros(3, 4, dtype=torch.bool)), ValueError,
         "attn_mask must have shape"),
        (None, lambda m: m(torch.randn(2, 3, 8), attn_mask=torch.zeros(3, 3, dtype=torch.int32)), TypeError,
         "attn_mask"),
    ],
)
def test_bad_input(build, call, exc, match):
    with pytest.raises(exc, match=match):
        m = build() if build else az.MultiHeadAttention(8, 2)
        if call:
            call(m)
