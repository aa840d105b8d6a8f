"""Double backward, mask gradients, retained graphs, torch.func through attnzoo's attention."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnzoo as az
from attnzoo.functional import attention_reference, scaled_dot_product_attention

D = torch.float64


def _qkv(shape=(1, 2, 3, 4), dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


def _penalty_grads(module: nn.Module, x: torch.Tensor, call, math_only: bool = False) -> dict[str, torch.Tensor]:
    """Gradient penalty ||d out / d x||² differentiated w.r.t. the parameters (double backward).

    ``math_only`` runs torch's SDPA on its math backend: torch's own fused CPU kernel has no
    double backward either (nn.MultiheadAttention with need_weights=False fails there).
    """
    x = x.clone().requires_grad_()
    with sdpa_kernel(SDPBackend.MATH) if math_only else contextlib.nullcontext():
        (gx,) = torch.autograd.grad(call(module, x).square().sum(), x, create_graph=True)
        names, params = zip(*module.named_parameters())
        return dict(zip(names, torch.autograd.grad(gx.square().sum(), params)))


def test_double_backward_through_mha_equals_torch():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(8, 2, batch_first=True, dtype=D)
    ours = az.MultiHeadAttention.from_torch(theirs)
    x = torch.randn(2, 5, 8, dtype=D)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    got = _penalty_grads(ours, x, lambda m, x: m(x, x, x, key_padding_mask=pad, need_weights=False)[0])
    expected = _penalty_grads(theirs, x, lambda m, x: m(x, x, x, key_padding_mask=pad, need_weights=False)[0],
                              math_only=True)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name])


def test_double_backward_through_encoder_layer_equals_torch():
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True, dtype=D)
    ours = az.TransformerEncoderLayer(8, 2, 16, dropout=0.0, dtype=D)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 8, dtype=D)
    got = _penalty_grads(ours, x, lambda m, x: m(x, is_causal=True))
    mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=D)
    expected = _penalty_grads(theirs, x, lambda m, x: m(x, src_mask=mask, is_causal=True), math_only=True)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name])


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_gradgradcheck_fused_path(mask_kind):
    q, k, v = _qkv()
    mask = {None: None, "bool": torch.tensor([[True, False, True], [True, True, False], [False, False, False]]),
            "float": torch.randn(3, 3, dtype=D, requires_grad=True)}[mask_kind]
    inputs = (q, k, v) + ((mask,) if mask_kind == "float" else ())

    def f(q, k, v, m=mask):
        return scaled_dot_product_attention(q, k, v, m, is_causal=mask_kind == "bool")

    torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "float requiring grad"])
def test_single_backward_is_torchs_fused_backward_bit_for_bit(mask_kind):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = {None: None, "bool": torch.rand(16, 16, generator=g) > 0.2, "float": torch.randn(16, 16, generator=g),
            "float requiring grad": torch.randn(16, 16, generator=g, requires_grad=True)}[mask_kind]
    if mask_kind == "bool":
        mask[:, 0] = True  # no fully masked rows: those are handled apart from the kernel
    inputs = (q, k, v, mask) if mask_kind == "float requiring grad" else (q, k, v)
    dout = torch.randn(2, 4, 16, 8, generator=g)
    expected = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), inputs, dout)
    got = torch.autograd.grad(scaled_dot_product_attention(q, k, v, mask), inputs, dout)
    for e, o in zip(expected, got):
        assert torch.equal(o, e)


def test_retained_graph_backs_up_twice_identically():
    q, k, v = _qkv((2, 2, 4, 8))
    out = scaled_dot_product_attention(q, k, v, is_causal=True)
    first = torch.autograd.grad(out.sum(), (q, k, v), retain_graph=True)
    second = torch.autograd.grad(out.sum(), (q, k, v))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_double_backward_with_dropout_on_cpu_equals_the_formula():
    """On CPU torch runs attention dropout on its math backend, which is twice differentiable."""
    q, k, v = _qkv((1, 2, 4, 4))

    def penalty_grad(f):
        torch.manual_seed(0)
        (gq,) = torch.autograd.grad(f(q, k, v).square().sum(), q, create_graph=True)
        return torch.autograd.grad(gq.square().sum(), (k, v))

    got = penalty_grad(lambda q, k, v: scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    expected = penalty_grad(lambda q, k, v: attention_reference(q, k, v, dropout_p=0.5))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_float_masks_that_require_grad_get_torchs_gradient():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(8, 2, batch_first=True, dtype=D)
    ours = az.MultiHeadAttention.from_torch(theirs)
    x = torch.randn(2, 4, 8, dtype=D)
    for shape in ((4, 4), (2 * 2, 4, 4)):
        mask = torch.randn(shape, dtype=D, requires_grad=True)
        (expected,) = torch.autograd.grad(theirs(x, x, x, attn_mask=mask, need_weights=False)[0].sum(), mask)
        (got,) = torch.autograd.grad(ours(x, attn_mask=mask)[0].sum(), mask)
        torch.testing.assert_close(got, expected)
    kpm = torch.randn(2, 4, dtype=D, requires_grad=True)
    (expected,) = torch.autograd.grad(theirs(x, x, x, key_padding_mask=kpm, need_weights=False)[0].sum(), kpm)
    (got,) = torch.autograd.grad(ours(x, key_padding_mask=kpm)[0].sum(), kpm)
    torch.testing.assert_close(got, expected)


def test_float_mask_alone_requiring_grad_with_weights():
    q = torch.randn(1, 2, 3, 4, dtype=D)
    mask = torch.randn(3, 3, dtype=D, requires_grad=True)
    out, w = scaled_dot_product_attention(q, q, q, mask, need_weights=True)
    (got,) = torch.autograd.grad(out.sum() + w.sum(), mask)
    ref_out, ref_w = attention_reference(q, q, q, mask, need_weights=True)
    (expected,) = torch.autograd.grad(ref_out.sum() + ref_w.sum(), mask)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("need_weights", [False, True])
def test_jvp_vmap_and_func_grad_match_the_formula(need_weights):
    q, k, v = (t.detach() for t in _qkv((2, 2, 3, 4)))
    mask = torch.tensor([[True, True, False], [False, True, True], [False, False, False]])

    def ours(q, k, v):
        out = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights)
        return out[0] + out[1].sum(-1, keepdim=True) if need_weights else out

    def ref(q, k, v):
        out, w = attention_reference(q, k, v, mask, need_weights=True)
        return out + w.sum(-1, keepdim=True) if need_weights else out

    tangents = tuple(torch.randn_like(t) for t in (q, k, v))
    for a, b in zip(jvp(ours, (q, k, v), tangents), jvp(ref, (q, k, v), tangents)):
        torch.testing.assert_close(a, b)
    batched = torch.randn(5, *q.shape, dtype=D)
    torch.testing.assert_close(vmap(ours, in_dims=(0, None, None))(batched, k, v),
                               torch.stack([ref(b, k, v) for b in batched]))
    torch.testing.assert_close(grad(lambda q: ours(q, k, v).sum())(q), grad(lambda q: ref(q, k, v).sum())(q))


def test_generic_device_path_on_cpu_tensors():
    """The Function used off-CPU (records the kernel's graph, replays it), exercised on CPU."""
    from attnzoo._fused_autograd import _FusedAttention

    q, k, v = _qkv((1, 2, 3, 4))
    mask = torch.randn(3, 3, dtype=D, requires_grad=True)
    dout = torch.randn(1, 2, 3, 4, dtype=D)
    expected = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v, mask), dout)
    got = torch.autograd.grad(_FusedAttention.apply(q, k, v, mask, 0.0, False, None), (q, k, v, mask), dout)
    for e, o in zip(expected, got):
        assert torch.equal(o, e)
    torch.autograd.gradgradcheck(lambda q, k, v, m: _FusedAttention.apply(q, k, v, m, 0.0, False, 0.7),
                                 (q, k, v, mask), fast_mode=True)
    out = _FusedAttention.apply(q, k, v, None, 0.5, False, None)
    with pytest.raises(RuntimeError, match="double backward .* with dropout is not supported"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


def test_jvp_and_vmap_through_the_module_equal_torch():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(8, 2, batch_first=True, dtype=D)
    ours = az.MultiHeadAttention.from_torch(theirs)
    x, tangent = torch.randn(2, 3, 8, dtype=D), torch.randn(2, 3, 8, dtype=D)
    pad = torch.tensor([[False] * 3, [False, False, True]])
    got = jvp(lambda x: ours(x, key_padding_mask=pad, need_weights=True)[0], (x,), (tangent,))
    expected = jvp(lambda x: theirs(x, x, x, key_padding_mask=pad)[0], (x,), (tangent,))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    xs = torch.randn(4, 2, 3, 8, dtype=D)
    torch.testing.assert_close(vmap(lambda x: ours(x, need_weights=True)[1])(xs),
                               torch.stack([theirs(x, x, x)[1] for x in xs]))
