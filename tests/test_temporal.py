"""TemporalAttention: the plain formula in float64, masking guarantees, gradients, the video
form, the factory and the recorder, and errors that name the bad argument.

The reference below is the textbook formula written with Python loops over batch, query
and time, using the module's own parameters, so the module is checked against the
definition rather than against stored numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import attnzoo as az
from attnzoo.record import AttentionRecorder
from attnzoo.temporal import MaskedSoftmax, TemporalAttention, padding_mask_from_lengths

F64 = torch.float64
FAST = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("single_thread")


def build(score: str = "additive", d: int = 5, q: int = 1, seed: int = 0, **kw) -> TemporalAttention:
    torch.manual_seed(seed)
    return TemporalAttention(d, score=score, num_queries=q, dtype=F64, **kw)


def rand(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@torch.no_grad()
def reference(m: TemporalAttention, x: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
    """Loops: e[b,q,t] = v_q . tanh(W x_bt + b) or q . x_bt / sqrt(D); softmax over valid t."""
    b_, t_, d_ = x.shape
    q_ = m.num_queries
    pooled, weights = torch.zeros(b_, q_, d_, dtype=F64), torch.zeros(b_, q_, t_, dtype=F64)
    for b in range(b_):
        valid = [t for t in range(t_) if pad is None or not bool(pad[b, t])]
        for q in range(q_):
            e = {}
            for t in valid:
                if m.score == "additive":
                    h = [math.tanh(sum(float(m.proj.weight[j, i]) * float(x[b, t, i]) for i in range(d_))
                                   + float(m.proj.bias[j])) for j in range(m.hidden)]
                    e[t] = sum(float(m.v.weight[q, j]) * h[j] for j in range(m.hidden))
                else:
                    e[t] = sum(float(m.query[q, i]) * float(x[b, t, i]) for i in range(d_)) / math.sqrt(d_)
            if not valid:
                continue
            top = max(e.values())
            z = sum(math.exp(v - top) for v in e.values())
            for t in valid:
                weights[b, q, t] = math.exp(e[t] - top) / z
                pooled[b, q] += weights[b, q, t] * x[b, t]
    if q_ == 1:
        return pooled[:, 0], weights[:, 0]
    return pooled, weights


@pytest.mark.parametrize("score, q, hidden", [("additive", 1, None), ("additive", 3, 4), ("dot", 1, None), ("dot", 2, None)])
def test_matches_the_plain_formula(score, q, hidden):
    m = build(score, q=q, **({} if hidden is None else {"hidden": hidden}))
    x = rand(3, 6, 5)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [True, False, True, False, False, True]])
    for mask in (None, pad):
        got_p, got_w = m(x, mask)
        ref_p, ref_w = reference(m, x, mask)
        assert got_p.shape == ref_p.shape and got_w.shape == ref_w.shape
        torch.testing.assert_close(got_w, ref_w, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got_p, ref_p, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("score", ["additive", "dot"])
def test_gradcheck_float64_with_padding(score):
    m = build(score, d=3, q=2)
    x = rand(2, 4, 3).requires_grad_()
    pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    params = [p for p in m.parameters()]
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):
        out = torch.func.functional_call(m, dict(zip(names, ps)), (x, pad))
        return out[0], out[1]

    assert torch.autograd.gradcheck(f, (x, *[p.detach().clone().requires_grad_() for p in params]))


@st.composite
def padded_batch(draw):
    b, t, d = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 4))
    pad = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=t, max_size=t), min_size=b, max_size=b)))
    return b, t, d, pad, draw(st.integers(0, 2**16)), draw(st.sampled_from(["additive", "dot"])), draw(st.integers(1, 3))


@FAST
@given(padded_batch())
def test_masking_properties(case):
    b, t, d, pad, seed, score, q = case
    m = build(score, d=d, q=q, seed=seed)
    x = rand(b, t, d, seed=seed)
    pooled, w = m(x, pad)
    w3 = w.reshape(b, q, t)  # (B, Q, T)
    # exactly 0 on padding; sums to 1 over the valid steps; a fully padded row is all zeros
    assert torch.all(w3.masked_select(pad[:, None, :].expand_as(w3)) == 0)
    empty = pad.all(-1)
    torch.testing.assert_close(w3.sum(-1)[~empty], torch.ones(int((~empty).sum()), q, dtype=F64))
    assert torch.all(w3[empty] == 0) and torch.all(pooled.reshape(b, q, d)[empty] == 0)
    # padded content, even NaN / Inf, changes nothing, forward or backward
    bad = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e300], dtype=F64).repeat(d)[:d]  # (D,)
    junk = torch.where(pad[..., None], bad, x).requires_grad_()
    p2, w2 = m(junk, pad)
    assert torch.equal(p2, pooled) and torch.equal(w2, w)
    (p2.sum() + w2.sum()).backward()
    assert torch.all(junk.grad[pad] == 0) and torch.isfinite(junk.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@FAST
@given(st.integers(2, 7), st.integers(0, 2**16), st.sampled_from(["additive", "dot"]))
def test_permuting_time_permutes_the_weights_only(t, seed, score):
    m = build(score, d=3, seed=seed)
    x = rand(2, t, 3, seed=seed)
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(seed))
    p1, w1 = m(x)
    p2, w2 = m(x[:, perm])
    torch.testing.assert_close(w2, w1[:, perm])
    torch.testing.assert_close(p2, p1)


def test_video_form_is_frame_attention_on_spatial_means():
    m = build("additive", d=4, q=1)
    clip = rand(2, 4, 5, 3, 3)  # (B, C, T, H, W)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    pooled, w = m(clip, pad)
    frames = clip.mean((3, 4)).transpose(1, 2)  # (B, T, C)
    ref_p, ref_w = reference(m, frames, pad)
    torch.testing.assert_close(w, ref_w)
    assert pooled.shape == (2, 4, 3, 3)
    torch.testing.assert_close(pooled, torch.einsum("bt,bcthw->bchw", ref_w, clip))
    torch.testing.assert_close(pooled.mean((2, 3)), ref_p)  # its spatial mean is the 3-D summary
    mq = build("dot", d=4, q=2)
    pq, wq = mq(clip, pad)
    assert pq.shape == (2, 2, 4, 3, 3) and wq.shape == (2, 2, 5)


def test_dropout_only_in_training_and_weights_returned_are_used():
    m = build("additive", d=4, dropout=0.5)
    x = rand(3, 6, 4)
    ref = build("additive", d=4)
    m.eval()
    for a, b in zip(m(x), ref(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    m.train()
    torch.manual_seed(3)
    pooled, w = m(x)
    assert (w == 0).any() and not torch.allclose(w.sum(-1), torch.ones(3, dtype=F64))
    torch.testing.assert_close(pooled, torch.einsum("bt,btd->bd", w, x))


def test_factory_recorder_and_lengths_helper():
    m = az.create_attention("temporal", 8, score="dot", num_queries=2)
    assert isinstance(m, az.TemporalAttention) and m.num_queries == 2 and m.score == "dot"
    model = torch.nn.ModuleDict({"pool": TemporalAttention(8), "multi": m})
    x = torch.randn(2, 5, 8)
    pad = padding_mask_from_lengths(torch.tensor([5, 3]))
    assert pad.tolist() == [[False] * 5, [False, False, False, True, True]]
    assert padding_mask_from_lengths(torch.tensor([1]), 3).tolist() == [[False, True, True]]
    before = model["pool"](x, pad)
    with AttentionRecorder(model) as rec:
        got = model["pool"](x, pad)
        _, w_multi = model["multi"](x, pad)
    assert torch.equal(got[0], before[0]) and torch.equal(got[1], before[1])
    assert [(r.name, r.kind, r.module) for r in rec.maps] == [
        ("pool", "temporal", "TemporalAttention"), ("multi", "temporal", "TemporalAttention")]
    assert torch.equal(rec["pool"][0], got[1]) and torch.equal(rec["multi"][0], w_multi)
    assert rec["multi"][0].shape == (2, 2, 5)


def test_empty_time_axis_gives_zeros():
    m = TemporalAttention(3)
    pooled, w = m(torch.randn(2, 0, 3))
    assert pooled.shape == (2, 3) and w.shape == (2, 0) and torch.all(pooled == 0)


def test_masked_softmax_alone():
    s = torch.tensor([[1.0, 2.0, float("nan")], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[False, False, True], [True, True, True]])
    w = MaskedSoftmax()(s.nan_to_num(0.0), mask)
    torch.testing.assert_close(w[0, :2], torch.softmax(torch.tensor([1.0, 2.0]), -1))
    assert w[0, 2] == 0 and torch.all(w[1] == 0)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"score must be one of \('additive', 'dot'\), got 'mlp'"):
        TemporalAttention(4, score="mlp")
    with pytest.raises(ValueError, match="hidden applies only to score='additive', got hidden=8 with score='dot'"):
        TemporalAttention(4, score="dot", hidden=8)
    with pytest.raises(ValueError, match="dim must be a positive int, got 0"):
        TemporalAttention(0)
    with pytest.raises(TypeError, match="hidden must be an int, got float"):
        TemporalAttention(4, hidden=2.0)
    with pytest.raises(ValueError, match="num_queries must be a positive int, got 0"):
        TemporalAttention(4, num_queries=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        TemporalAttention(4, dropout=1.0)
    m = TemporalAttention(4)
    with pytest.raises(ValueError, match=r"x must be 3-D or 5-D, got shape \(2, 4\)"):
        m(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"x must have 4 features \(last dim\) for this TemporalAttention, got 3"):
        m(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"x must have 4 features \(dim 1 \(channels"):
        m(torch.randn(2, 3, 5, 2, 2))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but TemporalAttention parameters are torch.float32"):
        m(torch.randn(2, 5, 4, dtype=F64))
    with pytest.raises(TypeError, match=r"padding_mask must be a bool tensor \(True = padding\), got dtype torch.int64"):
        m(torch.randn(2, 5, 4), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"padding_mask must have shape \(B, T\) = \(2, 5\), got \(2, 4\)"):
        m(torch.randn(2, 5, 4), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="padding_mask must be a bool torch.Tensor or None, got list"):
        m(torch.randn(2, 5, 4), [[True] * 5] * 2)
    with pytest.raises(TypeError, match="lengths must be an integer torch.Tensor"):
        padding_mask_from_lengths(torch.tensor([1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_with_nan_in_padding():
    m = build("additive", d=6, q=2).float()
    x = rand(3, 9, 6).float()
    pad = padding_mask_from_lengths(torch.tensor([9, 4, 0]), 9)
    x[pad] = float("nan")
    cpu = m(x, pad)
    gpu = m.cuda()(x.cuda(), pad.cuda())
    for c, g in zip(cpu, gpu):
        assert g.is_cuda and torch.isfinite(g).all()
        torch.testing.assert_close(g.cpu(), c, atol=1e-5, rtol=1e-5)
