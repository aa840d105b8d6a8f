"""attnzoo.masks: structured masks evaluated block by block, against the float64 formula
with a dense mask (and a dense bias) written out here from the same parameters."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnzoo._blocksparse as BS
from attnzoo import masks as M
from attnzoo.functional import attention_reference, scaled_dot_product_attention

D = torch.float64


# ------------------------------------------------------------------ dense formulas, fresh
def dense_window(L, S, left, right):
    i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
    return (j >= i - left) & (j <= i + right)  # (L, S)


def dense_sinks(L, S, n):
    return (torch.arange(S)[None, :] < n).expand(L, S)


def dense_causal(L, S):
    return torch.ones(L, S, dtype=torch.bool).tril()


def dense_docs(ids):  # (B, L) -> (B, 1, L, L)
    return (ids[:, :, None] == ids[:, None, :])[:, None]


def alibi_like(H):
    """A fresh ALiBi-style bias: head h adds -slope_h * |i - j| (slopes 2^-(h+1))."""
    slopes = torch.tensor([2.0 ** -(h + 1) for h in range(H)], dtype=D).view(H, 1, 1)

    def bias(q_idx, kv_idx):
        return -slopes * (q_idx - kv_idx).abs().to(D)  # (H, lq, lk)

    def full(L, S):
        i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
        return -slopes * (i - j).abs().to(D)  # (H, L, S)

    return bias, full


def qkv(B, H, L, S, E=4, Hk=None, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, E, generator=g, dtype=D)
    k = torch.randn(B, Hk or H, S, E, generator=g, dtype=D)
    v = torch.randn(B, Hk or H, S, 3, generator=g, dtype=D)
    return [t.requires_grad_(grad) for t in (q, k, v)]


@st.composite
def structured(draw, L, S, B):
    """(mask object, dense bool (B|1, 1, L, S)) for one random base mask or a combination."""
    def base():
        kind = draw(st.sampled_from(["window", "sinks", "causal", "docs"] if L == S else ["window", "sinks", "causal"]))
        if kind == "window":
            left, right = draw(st.integers(0, L + 2)), draw(st.integers(0, 4))
            return M.sliding_window(left, right), dense_window(L, S, left, right)
        if kind == "sinks":
            n = draw(st.integers(0, S + 1))
            return M.sinks(n), dense_sinks(L, S, n)
        if kind == "causal":
            return M.causal(), dense_causal(L, S)
        lengths = draw(st.lists(st.integers(0, 9), min_size=1, max_size=5))
        ids = torch.stack([torch.repeat_interleave(torch.arange(len(lengths) + 1),
                                                   torch.tensor([*lengths, L]))[:L] for _ in range(B)])
        ids[-1] = ids[-1].flip(0)  # the last sample: documents in another order
        return M.documents(ids), dense_docs(ids)

    m, d = base()
    op = draw(st.sampled_from([None, "and", "or"]))
    if op is not None:
        m2, d2 = base()
        m, d = (m & m2, d & d2) if op == "and" else (m | m2, d | d2)
    return m, d.reshape(-1, 1, L, S) if d.dim() == 4 else d.expand(1, 1, L, S)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), L=st.integers(1, 24), extra_s=st.integers(-6, 6), gqa=st.booleans(), padding=st.booleans(),
       bias=st.booleans(), bq=st.integers(1, 9), bk=st.integers(1, 9))
def test_blockwise_matches_dense_formula(data, L, extra_s, gqa, padding, bias, bq, bk):
    B, H = 2, 4
    S = max(1, L + extra_s) if data.draw(st.booleans()) else L
    mask, allowed = data.draw(structured(L, S, B))  # (B|1, 1, L, S)
    q, k, v = qkv(B, H, L, S, Hk=2 if gqa else None, seed=L * 31 + S, grad=True)
    attn_mask = None
    if padding:  # key padding: sample b keeps its first lengths[b] keys
        lengths = torch.tensor([S, data.draw(st.integers(0, S))])
        attn_mask = (torch.arange(S)[None, :] < lengths[:, None]).view(B, 1, 1, S)
        allowed = allowed & attn_mask
    fn, full = alibi_like(H) if bias else (None, None)
    dense = allowed.expand(B, H, L, S)
    if bias:
        dense = full(L, S).expand(B, H, L, S).masked_fill(~dense, -math.inf)  # float mask with the bias in it
    out, w = BS.block_attention(q, k, v, mask, score_bias=fn, attn_mask=attn_mask, enable_gqa=gqa,
                                need_weights=True, block_q=bq, block_kv=bk)
    ref_out, ref_w = attention_reference(q, k, v, dense, enable_gqa=gqa, need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref_out, (q, k, v), g)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), L=st.integers(1, 40), S=st.integers(1, 40), bq=st.integers(1, 12), bk=st.integers(1, 12))
def test_block_map_never_lies(data, L, S, bq, bk):
    """EMPTY blocks hold no visible pair and FULL blocks no hidden one, for every sample."""
    B = 2
    mask, allowed = data.draw(structured(L, S if data.draw(st.booleans()) else L, B))
    S = allowed.size(-1)
    bmap = mask.block_map(L, S, bq, bk, B, 1)
    assert bmap.shape == (math.ceil(L / bq), math.ceil(S / bk))
    a = allowed.expand(B, 1, L, S)
    for i in range(bmap.size(0)):
        for j in range(bmap.size(1)):
            block = a[..., i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            if bmap[i, j] == M.EMPTY:
                assert not block.any()
            elif bmap[i, j] == M.FULL:
                assert block.all()


def test_named_builders_classify_exactly():
    """Analytic classes on a block grid the masks fit: nothing is left PARTIAL needlessly."""
    bmap = M.sliding_window(7).block_map(32, 32, 8, 8)
    assert bmap.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert M.sinks(8).block_map(16, 32, 8, 8).tolist() == [[2, 0, 0, 0]] * 2
    ids = torch.tensor([[0] * 8 + [1] * 8])
    assert M.documents(ids).block_map(16, 16, 8, 8).tolist() == [[2, 0], [0, 2]]
    assert M.causal().block_map(16, 16, 8, 8).tolist() == [[1, 0], [2, 1]]


def test_functional_mask_argument_combines_with_everything():
    """mask= with is_causal, a float attn_mask, GQA, the bias, weights_for, (H, L, E) inputs."""
    B, H, L = 2, 4, 300
    q, k, v = qkv(B, H, L, L, Hk=2, seed=3, grad=True)
    g = torch.Generator().manual_seed(4)
    float_mask = torch.randn(B, 1, 1, L, generator=g, dtype=D)  # per-key bias, added
    fn, full = alibi_like(H)
    rows = torch.tensor([299, 0, 130, 5, 131])
    mask = M.sliding_window(60, 5) | M.sinks(4)
    out, w = scaled_dot_product_attention(q, k, v, float_mask, is_causal=True, enable_gqa=True, need_weights=True,
                                          weights_for=rows, mask=mask, score_bias=fn)
    allowed = (dense_window(L, L, 60, 5) | dense_sinks(L, L, 4)) & dense_causal(L, L)
    dense = (full(L, L) + float_mask).masked_fill(~allowed, -math.inf)  # (B, H, L, L)
    ref_out, ref_w = attention_reference(q, k, v, dense, enable_gqa=True, need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w, ref_w[..., rows, :], atol=1e-12, rtol=1e-10)
    # unbatched (H, L, E): the same numbers as sample 0
    out0 = scaled_dot_product_attention(q[0, :2], k[0, :1].expand(2, L, 4), v[0, :1].expand(2, L, 3),
                                        mask=M.sliding_window(9))
    ref0 = attention_reference(q[0, :2], k[0, :1].expand(2, L, 4), v[0, :1].expand(2, L, 3),
                               dense_window(L, L, 9, 0))
    torch.testing.assert_close(out0, ref0, atol=1e-12, rtol=1e-10)


def test_dropout_with_weights_keeps_out_equal_weights_at_value():
    q, k, v = qkv(1, 2, 40, 40, seed=5)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5, need_weights=True, mask=M.sliding_window(6))
    torch.testing.assert_close(out, w @ v)
    assert (w[..., ~dense_window(40, 40, 6, 0)] == 0).all()


def test_gradcheck_window_sinks_bias_padding():
    q, k, v = qkv(1, 2, 11, 11, seed=6, grad=True)
    fn, _ = alibi_like(2)
    pad = (torch.arange(11) < 9).view(1, 1, 1, 11)
    mask = M.sliding_window(3) | M.sinks(1)

    def f(q, k, v):
        return BS.block_attention(q, k, v, mask, score_bias=fn, attn_mask=pad, block_q=3, block_kv=2)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_double_backward_through_the_recomputed_blocks():
    q, k, v = qkv(1, 2, 9, 9, seed=9, grad=True)
    mask = M.sliding_window(2) | M.sinks(1)

    def f(q, k, v):
        return BS.block_attention(q, k, v, mask, block_q=2, block_kv=2)

    assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_fully_masked_rows_are_zero_with_finite_grads():
    """A window that sees only future keys past the padding: those rows see nothing."""
    L = 20
    q, k, v = qkv(2, 2, L, L, seed=7, grad=True)
    pad = (torch.arange(L) < 10).view(1, 1, 1, L)  # keys 10.. are padding
    with torch.no_grad():
        k[..., 10:, :] = float("nan")  # what padding may hold: must not reach anything
        v[..., 10:, :] = float("nan")
    mask = M.mask_mod(lambda b, h, qi, kj: kj > qi) & M.sliding_window(0, 3)  # keys i+1..i+3
    out, w = BS.block_attention(q, k, v, mask, attn_mask=pad, need_weights=True, block_q=4, block_kv=4)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (out[..., 9:, :] == 0).all() and (w[..., 9:, :] == 0).all()  # rows 9..19 see no valid key
    assert (out[..., :9, :] != 0).any()
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[..., 9:, :] == 0).all()
    documents_of_nothing = M.documents(torch.zeros(1, L, dtype=torch.long)) & M.sinks(0)
    assert (scaled_dot_product_attention(q, k.nan_to_num(), v.nan_to_num(), mask=documents_of_nothing) == 0).all()


def test_general_mask_mod_per_head_and_classify_hint():
    """A head-dependent mask_mod, with and without a block hint, against its dense form."""
    B, H, L = 1, 3, 50
    q, k, v = qkv(B, H, L, L, seed=8)

    def strided(b, h, qi, kj):  # head h sees keys at distance a multiple of h + 1, causally
        return ((qi - kj) % (h + 1) == 0) & (kj <= qi)

    def hint(q0, q1, k0, k1):  # causal structure: above the diagonal nothing is visible
        return torch.where(k0 > q1 - 1, M.EMPTY, M.PARTIAL)

    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    dense = torch.stack([((i - j) % (h + 1) == 0) & (j <= i) for h in range(H)])[None]  # (1, H, L, L)
    ref = attention_reference(q, k, v, dense)
    for classify in (None, hint):
        out = BS.block_attention(q, k, v, M.mask_mod(strided, classify), block_q=8, block_kv=8)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_only_visible_blocks_are_scored():
    """A window at L = 4096 scores ~(W + blocks) keys per row, never the L×S grid."""
    L, W = 4096, 100
    seen = []

    def window(b, h, qi, kj):
        seen.append(qi.numel() * kj.numel())
        return (kj <= qi) & (kj >= qi - W)

    def hint(q0, q1, k0, k1):  # the same window, classified as sliding_window would
        return M.sliding_window(W).block_map(L, L, 128, 64)

    q, k, v = (torch.randn(1, 1, L, 8) for _ in range(3))
    out = BS.block_attention(q, k, v, M.mask_mod(window, hint))
    torch.testing.assert_close(out, BS.block_attention(q, k, v, M.sliding_window(W)))
    assert max(seen) <= 128 * (W + 128 + 2 * 64) and sum(seen) <= L * (W + 128 + 2 * 64)


@pytest.mark.parametrize("call, error, message", [
    (lambda: M.sliding_window(-1), ValueError, "left must be >= 0, got -1"),
    (lambda: M.sliding_window(4, -2), ValueError, "right must be >= 0, got -2"),
    (lambda: M.sliding_window(2.5), TypeError, "left must be an int >= 0, got float"),
    (lambda: M.sinks(-3), ValueError, "n must be >= 0, got -3"),
    (lambda: M.documents(torch.zeros(2, 5)), TypeError, "doc_ids must be an integer tensor"),
    (lambda: M.documents(torch.zeros(5, dtype=torch.long)), ValueError, r"doc_ids must have shape \(B, L\), got \(5,\)"),
    (lambda: M.documents([0, 1]), TypeError, "doc_ids must be a torch.Tensor"),
    (lambda: M.mask_mod(3), TypeError, "mask_mod must be callable"),
    (lambda: M.causal() & "window", TypeError, "other must be an attnzoo.masks mask"),
])
def test_bad_builder_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"mask": M.documents(torch.zeros(1, 7, dtype=torch.long))}, ValueError, r"doc_ids must have shape \(B or 1, L\)"),
    ({"mask": M.mask_mod(lambda b, h, qi, kj: (kj <= qi).int())}, TypeError,
     "mask_mod must return a bool tensor .* got dtype torch.int32"),
    ({"mask": M.mask_mod(lambda b, h, qi, kj: torch.ones(5, 5, 5, 5, 5, dtype=torch.bool))}, ValueError,
     r"mask_mod must return a bool tile broadcasting to \(B, H, lq, lk\) = \(1, 2, 9, 9\), got \(5, 5, 5, 5, 5\)"),
    ({"score_bias": lambda qi, kj: torch.zeros(3, 9, 9, dtype=D)}, ValueError,
     r"score_bias\(q_idx, kv_idx\) must return a float \(H or 1, lq, lk\) = \(2 or 1, 9, 9\) tensor, got shape \(3, 9, 9\)"),
    ({"score_bias": lambda qi, kj: (qi - kj)}, ValueError, r"score_bias.*got shape \(9, 9\) dtype torch.int64"),
    ({"score_bias": 1.0}, TypeError, "score_bias must be callable"),
    ({"mask": torch.ones(9, 9, dtype=torch.bool)}, TypeError, "mask must be an attnzoo.masks mask"),
])
def test_bad_call_arguments(kwargs, error, message):
    q, k, v = qkv(1, 2, 9, 9)
    with pytest.raises(error, match=message):
        scaled_dot_product_attention(q, k, v, **kwargs)


def test_five_dim_query_is_refused():
    q = torch.randn(1, 1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"with mask= or score_bias=, query must be \(B, H, L, E\)"):
        scaled_dot_product_attention(q, q, q, mask=M.causal())
