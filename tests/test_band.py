"""The fast paths of relative masks and biases (`attnzoo._band`): windows batched over
views of q, k, v, and a relative score bias as a strided tile over reversed rows. Each is
checked against the float64 formula with the dense mask and bias written out here, and
each test first checks that the path it is about really ran."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnzoo._band as band
import attnzoo._blockrun as RUN
import attnzoo._blocksparse as BS
from attnzoo import masks as M
from attnzoo.functional import scaled_dot_product_attention
from attnzoo.positions import alibi_score_bias, alibi_slopes

D = torch.float64


def symmetric_alibi(H, relative=True):
    """-slope_h · |i - j|, slopes 2^-(h+1): a bias of kv_idx - q_idx alone (marked so or not)."""
    slopes = torch.tensor([2.0 ** -(h + 1) for h in range(H)], dtype=D).view(H, 1, 1)

    def bias(q_idx, kv_idx):
        return -slopes * (q_idx - kv_idx).abs().to(D)  # (H, lq, lk)

    if relative:
        bias.relative = True
    return bias


def reference(q, k, v, left, right, causal, bias):
    """softmax(q kᵀ/√E + bias, hidden -> -inf) v, rows that see nothing -> 0."""
    L, S = q.size(-2), k.size(-2)
    i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
    allowed = torch.ones(L, S, dtype=torch.bool)
    if left is not None:
        allowed &= (j >= i - left) & (j <= i + right)
    if causal:
        allowed &= j <= i
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if bias is not None:
        scores = scores + bias(i, j)
    scores = scores.masked_fill(~allowed, -math.inf)
    empty = ~allowed.any(-1, keepdim=True)
    return torch.softmax(scores.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0) @ v


def inputs(B, H, L, S, E=4, Ev=None, seed=0, transposed=False):
    """q, k, v in float64 requiring grad; Ev = E by default (torch's CPU flash kernel, which
    the fast paths use, needs it)."""
    g = torch.Generator().manual_seed(seed)
    Ev = E if Ev is None else Ev

    def make(n, e):
        if transposed:  # (B, n, H, e) viewed as (B, H, n, e), as MultiHeadAttention's heads are
            return torch.randn(B, n, H, e, generator=g, dtype=D).transpose(1, 2).requires_grad_()
        return torch.randn(B, H, n, e, generator=g, dtype=D).requires_grad_()

    return make(L, E), make(S, E), make(S, Ev)


class Spy:
    """Counts the band plans made and the strided tiles built during a `with` block."""

    def __init__(self, monkeypatch):
        self.bands = self.tiles = 0
        plan, tile = RUN.band_plan, RUN.toeplitz_tile

        def counted_plan(run):
            found = plan(run)
            self.bands += found is not None
            return found

        def counted_tile(*args):
            found = tile(*args)
            self.tiles += found is not None
            return found

        monkeypatch.setattr(RUN, "band_plan", counted_plan)
        monkeypatch.setattr(RUN, "toeplitz_tile", counted_tile)


def check(q, k, v, out, want):
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 2), H=st.sampled_from([1, 3]), L=st.integers(1, 80), extra_s=st.integers(-8, 8),
       left=st.integers(0, 12), right=st.integers(0, 4), causal=st.booleans(), bias=st.booleans(),
       windowed=st.booleans(), transposed=st.booleans(), bq=st.integers(1, 8))
def test_relative_paths_match_the_dense_formula(B, H, L, extra_s, left, right, causal, bias, windowed,
                                                transposed, bq):
    S = max(1, L + extra_s)
    q, k, v = inputs(B, H, L, S, seed=L * 7 + S, transposed=transposed, Ev=3 if L % 5 == 0 else None)
    fn = symmetric_alibi(H) if bias else None
    mask = M.sliding_window(left, right) if windowed else None
    if mask is None and fn is None:
        mask = M.causal()
        causal, windowed, left, right = True, False, None, None
    out = BS.block_attention(q, k, v, mask, score_bias=fn, is_causal=causal, block_q=bq, block_kv=max(1, bq // 2))
    want = reference(q, k, v, left if windowed else None, right, causal, fn)
    check(q, k, v, out, want)


@pytest.mark.parametrize("transposed", [False, True])
def test_window_runs_on_the_band_path(monkeypatch, transposed):
    spy = Spy(monkeypatch)
    q, k, v = inputs(2, 3, 300, 300, E=8, seed=1, transposed=transposed)
    fn = symmetric_alibi(3)
    out = scaled_dot_product_attention(q, k, v, mask=M.sliding_window(20, 3), score_bias=fn)
    assert spy.bands == 1
    check(q, k, v, out, reference(q, k, v, 20, 3, False, fn))


def test_band_path_in_float32_matches_float64():
    q, k, v = (t.detach().float().requires_grad_() for t in inputs(1, 4, 1000, 1000, E=16, seed=2))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    mask = M.sliding_window(100)
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    want = reference(q64, k64, v64, 100, 0, False, None)
    torch.testing.assert_close(out.double(), want, atol=2e-6, rtol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(want, (q64, k64, v64), g.double())):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4)


def test_relative_bias_without_a_mask_uses_strided_tiles(monkeypatch):
    spy = Spy(monkeypatch)
    q, k, v = inputs(2, 3, 200, 170, seed=3)
    fn = symmetric_alibi(3)
    out = scaled_dot_product_attention(q, k, v, score_bias=fn)
    assert spy.tiles >= 1 and spy.bands == 0
    check(q, k, v, out, reference(q, k, v, None, None, False, fn))


def test_unmarked_bias_takes_the_dense_tiles(monkeypatch):
    spy = Spy(monkeypatch)
    q, k, v = inputs(1, 3, 200, 200, seed=4)
    fn = symmetric_alibi(3, relative=False)
    out = scaled_dot_product_attention(q, k, v, mask=M.sliding_window(10), score_bias=fn)
    assert spy.tiles == 0 and spy.bands == 0
    check(q, k, v, out, reference(q, k, v, 10, 0, False, fn))


def test_alibi_score_bias_is_relative_and_exact_on_the_fast_paths(monkeypatch):
    spy = Spy(monkeypatch)
    H = 4
    slopes = alibi_slopes(H).double()
    fn = alibi_score_bias(slopes)
    assert fn.relative is True
    q, k, v = inputs(1, H, 256, 256, seed=5)
    for mask, causal, left in ((M.sliding_window(31), False, 31), (None, True, None)):
        out = scaled_dot_product_attention(q, k, v, mask=mask, score_bias=fn, is_causal=causal)
        check(q, k, v, out, reference(q, k, v, left, 0, causal, fn))
    assert spy.bands == 1 and spy.tiles >= 1


def test_band_gradcheck_and_double_backward(monkeypatch):
    spy = Spy(monkeypatch)
    q, k, v = inputs(1, 2, 24, 24, seed=6)
    fn = symmetric_alibi(2)

    def f(q, k, v):
        return BS.block_attention(q, k, v, M.sliding_window(3, 1), score_bias=fn, block_q=4, block_kv=4)

    assert torch.autograd.gradcheck(f, (q, k, v))
    assert spy.bands > 0
    assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_rows_that_see_nothing_leave_the_fast_paths(monkeypatch):
    """Query rows past the keys' end by more than the window see no key: 0, never NaN."""
    spy = Spy(monkeypatch)
    q, k, v = inputs(1, 2, 40, 20, seed=7)
    fn = symmetric_alibi(2)
    out = BS.block_attention(q, k, v, M.sliding_window(5), score_bias=fn, block_q=4, block_kv=4)
    assert spy.bands == 0
    assert (out[..., 25:, :] == 0).all() and torch.isfinite(out).all()
    check(q, k, v, out, reference(q, k, v, 5, 0, False, fn))


def test_band_temporaries_stay_small():
    """Each call's largest temporary is bounded by `_BAND_BYTES`, whatever the length."""
    q, k, v = (torch.randn(1, 4, 4096, 64) for _ in range(3))
    run = RUN._Blocks(q, k, v, M.sliding_window(255), None, None, None, BS._BLOCK_Q, BS._BLOCK_KV)
    plan = band.plan(run)
    assert plan is not None
    for pass_, per_row in (("forward", plan.bq * 64), ("backward", plan.lk * 64)):
        g = max(c for kind, _, c in plan.blocks(pass_) if kind == "inner")
        assert g * 4 * per_row * 4 <= band._BAND_BYTES[pass_]
