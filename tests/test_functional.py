"""attnzoo.functional against torch's SDPA and the float64 formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnzoo._masked as AM
import attnzoo._weights as AW
import attnzoo.functional as AF
from attnzoo.functional import attention_reference, attention_weights, scaled_dot_product_attention

D = torch.float64


def qkv(B=2, H=3, L=5, S=7, E=8, Ev=6, Hk=None, dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, E, generator=g, dtype=dtype)
    k = torch.randn(B, Hk or H, S, E, generator=g, dtype=dtype)
    v = torch.randn(B, Hk or H, S, Ev, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "bool_bcast"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_matches_torch_sdpa(is_causal, mask_kind, scale):
    q, k, v = qkv()
    g = torch.Generator().manual_seed(1)
    mask = {
        None: None,
        "bool": torch.rand(2, 3, 5, 7, generator=g) > 0.3,
        "float": torch.randn(2, 1, 5, 7, generator=g, dtype=D),
        "bool_bcast": torch.rand(1, 7, generator=g) > 0.3,
    }[mask_kind]
    if mask is not None and mask.dtype == torch.bool:
        mask[..., 0] = True  # torch gives NaN for fully masked rows; compare where it is defined
    if is_causal and mask is not None:  # torch refuses both at once: fold the causal mask in
        causal = torch.ones(5, 7, dtype=torch.bool).tril()
        ref_mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, -math.inf)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask, scale=scale)
    else:
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    out, w = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal, scale=scale, need_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    ref_out, ref_w = attention_reference(q, k, v, mask, is_causal=is_causal, scale=scale, need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_gqa_matches_torch():
    q, k, v = qkv(H=6, Hk=2)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    out, w = scaled_dot_product_attention(q, k, v, enable_gqa=True, need_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    _, ref_w = attention_reference(q, k, v, enable_gqa=True, need_weights=True)
    torch.testing.assert_close(w, ref_w)


@pytest.mark.parametrize("is_causal", [False, True])
def test_small_weights_calls_take_the_output_from_the_weights(is_causal):
    """Like torch's weights path: out == weights @ v exactly, and close to the fused kernel."""
    q, k, v = qkv(dtype=torch.float32)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=is_causal, need_weights=True)
    assert torch.equal(out, w @ v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=is_causal))


@pytest.mark.parametrize("route", ["fused_output", "autograd"])
def test_float32_output_equals_plain_fused_kernel(monkeypatch, route):
    """Inside fused_output() (the recorder), or above the small-call size with autograd,
    asking for the weights never changes the output: it is torch's fused kernel, bit for bit."""
    q, k, v = qkv(dtype=torch.float32)
    _, w_small = scaled_dot_product_attention(q, k, v, is_causal=True, need_weights=True)
    if route == "fused_output":
        with AF.fused_output():
            out, w = scaled_dot_product_attention(q, k, v, is_causal=True, need_weights=True)
        assert AF._fused_output_depth == 0  # left on exit
    else:
        monkeypatch.setattr(AW, "_SHARED_MAX_SCORES", {"cpu": 0})
        out, w = scaled_dot_product_attention(q.requires_grad_(), k, v, is_causal=True, need_weights=True)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.equal(w, w_small)  # the same weights either way


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("dtype,tol", [(D, 1e-12), (torch.bfloat16, 2e-2)])
def test_blocked_output_from_weights(monkeypatch, grad, average, dtype, tol):
    """Above the small-call size without autograd, each block of weights gives its output
    rows: out == weights @ v block by block, equal to the float64 formula, masks included
    (bfloat16: float32 arithmetic, rounded once)."""
    monkeypatch.setattr(AW, "_SHARED_MAX_SCORES", {"cpu": 0})
    monkeypatch.setattr(AW, "_BLOCK_ELEMENTS", {"cpu": 2 * 3 * 2 * 7})  # blocks of two query rows
    q, k, v = (t.to(dtype) for t in qkv(L=9))
    allowed = torch.rand(2, 1, 9, 7, generator=torch.Generator().manual_seed(4)) > 0.4
    allowed[1, 0, 3] = False  # a row with nothing to attend to
    with torch.set_grad_enabled(grad):
        out, w = scaled_dot_product_attention(q.requires_grad_(grad), k, v, allowed, is_causal=True,
                                              need_weights=True) if not average else AF.sdpa(
            q.requires_grad_(grad), k, v, allowed, is_causal=True, need_weights=True, average_heads=True)
    ref_out, ref_w = attention_reference(*(t.detach().double() for t in (q, k, v)), allowed, is_causal=True,
                                         need_weights=True)
    assert out.dtype == w.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(w.double(), ref_w.mean(-3) if average else ref_w, atol=tol, rtol=0)
    assert out[1, :, 3].abs().max() == 0 and out.requires_grad == grad


@pytest.mark.parametrize("mask_dtype", [torch.bool, D])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fully_masked_rows_are_zero_with_finite_gradients(mask_dtype, is_causal):
    q, k, v = (t.requires_grad_() for t in qkv())
    allowed = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(3)) > 0.5
    allowed[0, 1, 2] = False  # one row that may attend to nothing
    allowed[1] = False  # a whole sample
    mask = allowed if mask_dtype == torch.bool else torch.zeros(allowed.shape, dtype=D).masked_fill(~allowed, -math.inf)
    for fn in (scaled_dot_product_attention, attention_reference):
        out, w = fn(q, k, v, mask, is_causal=is_causal, need_weights=True)
        assert torch.isfinite(out).all() and torch.isfinite(w).all()
        assert out[0, 1, 2].abs().max() == 0 and w[1].abs().max() == 0 and out[1].abs().max() == 0
        (out.sum() + w.sum()).backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all()
            t.grad = None


def test_gradcheck_fast_path_and_weights():
    q, k, v = (t.requires_grad_() for t in qkv(B=1, H=2, L=3, S=4, E=3, Ev=2))
    mask = torch.tensor([[True, False, True, True], [False, False, False, False], [True, True, False, True]])
    for causal in (False, True):
        torch.autograd.gradcheck(
            lambda q, k, v: scaled_dot_product_attention(q, k, v, mask, is_causal=causal, need_weights=True),
            (q, k, v),
        )


def test_weights_for_selected_rows_equal_full_rows():
    q, k, v = qkv(L=9)
    mask = torch.rand(2, 1, 9, 7, generator=torch.Generator().manual_seed(5)) > 0.4
    _, full = scaled_dot_product_attention(q, k, v, mask, is_causal=True, need_weights=True)
    for rows in (torch.tensor([8, 0, 3]), slice(2, 9, 3), range(4, 6), torch.tensor([-1])):
        _, w = scaled_dot_product_attention(q, k, v, mask, is_causal=True, need_weights=True, weights_for=rows)
        idx = torch.arange(9)[rows] if not isinstance(rows, torch.Tensor) else rows % 9
        torch.testing.assert_close(w, full[..., idx, :], atol=1e-14, rtol=0)


@pytest.mark.parametrize("grad", [False, True])
def test_blocked_paths_equal_unblocked(monkeypatch, grad):
    """Force tiny blocks so the blockwise weights and causal+mask paths run on small data."""
    q, k, v = qkv(L=11, S=11)
    mask = torch.rand(2, 1, 1, 11, generator=torch.Generator().manual_seed(7)) > 0.3
    expected = attention_reference(q, k, v, mask, is_causal=True, need_weights=True)
    monkeypatch.setitem(AW._BLOCK_ELEMENTS, "cpu", 40)
    monkeypatch.setattr(AM, "_MASK_ELEMENTS", 1)
    for t in (q, k, v):
        t.requires_grad_(grad)
    out, w = scaled_dot_product_attention(q, k, v, mask, is_causal=True, need_weights=True)
    torch.testing.assert_close(out, expected[0])
    torch.testing.assert_close(w, expected[1])
    avg = attention_weights(q, k, mask, True, average_heads=True)
    torch.testing.assert_close(avg, expected[1].mean(1))
    rows = attention_weights(q, k, mask, True, rows=torch.tensor([10, 0, 4, 7]))
    torch.testing.assert_close(rows, expected[1][..., [10, 0, 4, 7], :])
    if grad:
        gq, gk = torch.autograd.grad((avg * torch.randn_like(avg)).sum(), (q, k))
        assert torch.isfinite(gq).all() and torch.isfinite(gk).all()


@pytest.mark.parametrize("kind, lengths, L", [
    ("bool", [7, 3, 0, 7], 9), ("float", [7, 3, 0, 7], 6), ("bool", [5, 5, 5, 5], 6), ("float", [0, 0, 0, 0], 9),
    ("bool", [9, 9, 9, 9], 9),
])
def test_causal_tail_padding_runs_per_length_and_equals_formula(monkeypatch, kind, lengths, L):
    """Causal + a key padding tail: each length of valid keys runs the causal kernel unmasked."""
    monkeypatch.setattr(AM, "_LENGTHS_MIN_ELEMENTS", 1)
    calls = []
    real = AM._per_length_causal_sdpa
    monkeypatch.setattr(AM, "_per_length_causal_sdpa", lambda *a: calls.append(a[3]) or real(*a))
    q, k, v = (t.requires_grad_() for t in qkv(B=4, H=2, L=L, S=9, E=4, Ev=3))
    allowed = torch.arange(9) < torch.tensor(lengths)[:, None]  # (B, S)
    mask = allowed[:, None, None, :]
    if kind == "float":
        mask = torch.zeros(mask.shape, dtype=D).masked_fill(~mask, -math.inf)
    out = scaled_dot_product_attention(q, k, v, mask, is_causal=True)
    ref = attention_reference(q, k, v, mask, is_causal=True)
    assert calls == [lengths]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_causal_with_other_masks_does_not_take_the_length_route(monkeypatch):
    monkeypatch.setattr(AM, "_LENGTHS_MIN_ELEMENTS", 1)
    monkeypatch.setattr(AM, "_per_length_causal_sdpa", None)  # would fail if called
    q, k, v = qkv(B=3, H=2, L=6, S=6)
    left = torch.arange(6) >= torch.tensor([0, 2, 1])[:, None]  # left padding: a suffix is valid
    holes = torch.tensor([True, False, True, True, True, True]).expand(3, 6)
    for allowed in (left, holes):
        mask = allowed[:, None, None, :]
        out = scaled_dot_product_attention(q, k, v, mask, is_causal=True)
        torch.testing.assert_close(out, attention_reference(q, k, v, mask, is_causal=True))
    mask = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2)) > 0.5  # (B, 1, L, S)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask, is_causal=True),
                               attention_reference(q, k, v, mask, is_causal=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_are_float32_accurate_and_never_nan(dtype):
    q = torch.full((1, 1, 2, 64), 100.0).to(dtype)  # scores 80,000: beyond float16's range
    _, w = scaled_dot_product_attention(q, q, q, need_weights=True)
    assert w.dtype == dtype and torch.equal(w.float(), torch.full((1, 1, 2, 2), 0.5))
    q, k, v = (t.to(dtype) for t in qkv(B=2, H=3, L=6, S=7, E=8, Ev=4))
    mask = torch.zeros(2, 1, 6, 7, dtype=dtype)
    mask[0, 0, 2] = torch.finfo(dtype).min  # a row where every key gets the most negative bias
    mask[1, 0, :, 3] = torch.finfo(dtype).min
    ref_w = attention_reference(q.double(), k.double(), v.double(), mask.double(), need_weights=True)[1]
    for avg in (False, True):
        w = AF.sdpa(q, k, v, mask, need_weights=True, average_heads=avg)[1]
        assert w.dtype == dtype and torch.isfinite(w).all()
        torch.testing.assert_close(w.double(), ref_w.mean(1) if avg else ref_w, atol=4e-3, rtol=1e-2)


def test_float_mask_that_alone_requires_grad_gets_gradients():
    q, k, v = qkv()
    mask = torch.randn(2, 1, 5, 7, dtype=D, requires_grad=True)
    for causal in (False, True):
        _, w = scaled_dot_product_attention(q, k, v, mask, is_causal=causal, need_weights=True)
        _, ref_w = attention_reference(q, k, v, mask, is_causal=causal, need_weights=True)
        g = torch.randn_like(w)
        (got,) = torch.autograd.grad(w, mask, g)
        (want,) = torch.autograd.grad(ref_w, mask, g)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_dropout_with_weights_is_consistent():
    q, k, v = qkv()
    torch.manual_seed(0)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5, need_weights=True)
    torch.testing.assert_close(out, w @ v)
    assert (w == 0).any()  # dropout really acted


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 3), L=st.integers(1, 6), S=st.integers(1, 6),
    E=st.integers(1, 5), causal=st.booleans(), kind=st.sampled_from(["none", "bool", "float"]),
    seed=st.integers(0, 2**16),
)
def test_property_fast_path_equals_formula(B, H, L, S, E, causal, kind, seed):
    q, k, v = qkv(B, H, L, S, E, E, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = None
    if kind == "bool":
        mask = torch.rand(B, 1, L, S, generator=g) > 0.5  # fully masked rows included
    elif kind == "float":
        mask = torch.randn(L, S, generator=g, dtype=D).masked_fill(torch.rand(L, S, generator=g) > 0.7, -math.inf)
    out, w = scaled_dot_product_attention(q, k, v, mask, is_causal=causal, need_weights=True)
    ref_out, ref_w = attention_reference(q, k, v, mask, is_causal=causal, need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=1e-10)
    assert torch.isfinite(out).all()
    # every row's weights sum to 1, or to 0 when the row may attend to nothing
    sums = w.sum(-1)
    assert ((sums - 1).abs() < 1e-9).logical_or(sums == 0).all()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"query": torch.ones(2, 3, 4, dtype=torch.long)}, TypeError, "query"),
        ({"key": torch.randn(2, 3, 7, 5, dtype=D)}, ValueError, "head dim"),
        ({"value": torch.randn(2, 3, 6, 6, dtype=D)}, ValueError, "key and value"),
        ({"key": torch.randn(2, 3, 7, 8)}, TypeError, "dtype"),
        ({"attn_mask": torch.ones(5, 6, dtype=torch.bool)}, ValueError, "attn_mask"),
        ({"attn_mask": torch.ones(5, 7, dtype=torch.int64)}, TypeError, "attn_mask"),
        ({"dropout_p": 1.0}, ValueError, "dropout_p"),
        ({"key": torch.randn(2, 2, 7, 8, dtype=D), "value": torch.randn(2, 2, 7, 6, dtype=D), "enable_gqa": True},
         ValueError, "enable_gqa"),
        ({"key": torch.randn(3, 3, 7, 8, dtype=D), "value": torch.randn(3, 3, 7, 6, dtype=D)}, ValueError, "batch"),
    ],
)
def test_bad_input(kwargs, exc, match):
    q, k, v = qkv()
    args = {"query": q, "key": k, "value": v} | kwargs
    with pytest.raises(exc, match=match):
        scaled_dot_product_attention(**args)


def test_bad_weights_for():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="weights_for"):
        scaled_dot_product_attention(q, k, v, need_weights=True, weights_for=torch.tensor([5]))
    with pytest.raises(TypeError, match="weights_for"):
        scaled_dot_product_attention(q, k, v, need_weights=True, weights_for=[0, 1])


def test_causal_tail_padding_skips_the_length_route_while_compiling(monkeypatch):
    """The per-length route reads the lengths on the host: inside torch.compile (or jit tracing)
    that would break the graph, so the masked kernel runs instead, with the same result."""
    monkeypatch.setattr(AM, "_LENGTHS_MIN_ELEMENTS", 1)
    monkeypatch.setattr(AM, "_per_length_causal_sdpa", None)  # would fail if called
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v = qkv(B=2, H=2, L=6, S=6, E=4, Ev=4)
    mask = (torch.arange(6) < torch.tensor([6, 3])[:, None])[:, None, None, :]
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask, is_causal=True),
                               attention_reference(q, k, v, mask, is_causal=True))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([1, 1, 2, 3]), max_size=4), min_size=1, max_size=4))
def test_shape_broadcast_agrees_with_torch(shapes):
    """The fast broadcast used by input checking equals torch.broadcast_shapes (or refuses)."""
    from attnzoo.functional import _broadcast

    try:
        expected = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        expected = None
    assert _broadcast(*map(tuple, shapes)) == expected
