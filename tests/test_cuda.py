"""The same code on CUDA tensors: results equal the CPU's. Skipped without a GPU."""

import pytest
import torch

import attnzoo as az
from attnzoo.functional import attention_reference, scaled_dot_product_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_functional_on_cuda_matches_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 33, 33, generator=g) > 0.4
    mask[0, 0, 3] = False  # a row with nothing to attend to
    ref_out, ref_w = attention_reference(q.double(), k.double(), v.double(), mask, is_causal=True, need_weights=True)
    out, w = scaled_dot_product_attention(q.cuda(), k.cuda(), v.cuda(), mask.cuda(), is_causal=True, need_weights=True)
    assert out.is_cuda and w.is_cuda
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(w.cpu().double(), ref_w, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.float16, 5e-3)])
def test_cuda_output_from_weights_in_blocks(monkeypatch, dtype, tol):
    """need_weights without autograd: the output from the weights, a block of rows at a time."""
    import attnzoo._weights as AW

    monkeypatch.setattr(AW, "_SHARED_MAX_SCORES", {})
    monkeypatch.setattr(AW, "_SHARED_DEFAULT", 0)
    monkeypatch.setattr(AW, "_BLOCK_ELEMENTS", {"cuda": 2 * 4 * 33 * 5})  # five query rows a block
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 33, 16, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 33, 33, generator=g) > 0.4
    ref_out, ref_w = attention_reference(q.double(), k.double(), v.double(), mask, is_causal=True, need_weights=True)
    with torch.no_grad():
        out, w = scaled_dot_product_attention(*(t.cuda().to(dtype) for t in (q, k, v)), mask.cuda(),
                                              is_causal=True, need_weights=True)
    assert out.dtype == w.dtype == dtype
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(w.cpu().double(), ref_w, atol=tol, rtol=tol)


@pytest.mark.parametrize("module", ["mha", "cbam", "se"])
def test_modules_on_cuda_match_cpu(module):
    torch.manual_seed(0)
    if module == "mha":
        m = az.MultiHeadAttention(32, 4, num_kv_heads=2)
        x = torch.randn(2, 20, 32)
        pad = torch.zeros(2, 20, dtype=torch.bool)
        pad[1, 15:] = True
        run = lambda m, x, pad: m(x, key_padding_mask=pad, is_causal=True, need_weights=True)  # noqa: E731
        cpu = run(m, x, pad)
        gpu = run(m.cuda(), x.cuda(), pad.cuda())
    else:
        m = az.create_attention(module, 16, reduction=4)
        x = torch.randn(2, 16, 9, 9)
        cpu, gpu = m(x), m.cuda()(x.cuda())
    for c, g in zip(*(t if isinstance(t, tuple) else (t,) for t in (cpu, gpu))):
        torch.testing.assert_close(g.cpu(), c, atol=2e-3, rtol=2e-3)


def test_generate_on_cuda_equals_uncached():
    torch.manual_seed(0)
    model = az.Seq2SeqTransformer(20, 12, d_model=32, nhead=4, max_len=40).cuda().eval()
    src = torch.randint(4, 20, (3, 10), device="cuda")
    a = model.generate(src, 20, bos_id=1, eos_id=2)
    b = model.generate(src, 20, bos_id=1, eos_id=2, use_cache=False)
    assert a.is_cuda and torch.equal(a, b)


def test_cuda_generate_replays_a_graph_and_equals_uncached(monkeypatch):
    """On CUDA the cached step is a captured graph (unless something observes the modules)."""
    import attnzoo.transformer as T

    built = []
    real = T.GraphedStep
    monkeypatch.setattr(T, "GraphedStep", lambda *a: built.append(real(*a)) or built[-1])
    torch.manual_seed(0)
    model = az.Seq2SeqTransformer(20, 12, d_model=32, nhead=4, max_len=40).cuda().eval()
    src = torch.randint(4, 20, (3, 10), device="cuda")
    src[1, 7:] = 0  # padding in the source
    a = model.generate(src, 20, bos_id=1, eos_id=2)
    assert len(built) == 1 and torch.equal(a, model.generate(src, 20, bos_id=1, eos_id=2, use_cache=False))
    attn = model.decoder_layers[0].self_attn
    attn.attend = attn.attend  # a recorder's patch: decoding must stay eager
    assert torch.equal(model.generate(src, 20, bos_id=1, eos_id=2), a) and len(built) == 1


def test_cuda_causal_tail_padding_and_bf16_weights(monkeypatch):
    """The per-length causal route and the float32-accumulated half weights, on the GPU."""
    import attnzoo._masked as AM

    monkeypatch.setattr(AM, "_LENGTHS_MIN_ELEMENTS", 1)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 40, 16, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.arange(40) < torch.tensor([40, 17, 0])[:, None])[:, None, None, :]
    ref = attention_reference(q, k, v, mask, is_causal=True)
    out = scaled_dot_product_attention(q.float().cuda(), k.float().cuda(), v.float().cuda(), mask.cuda(), is_causal=True)
    torch.testing.assert_close(out.cpu().double(), ref, atol=2e-3, rtol=2e-3)
    h = torch.full((1, 1, 2, 64), 100.0, device="cuda", dtype=torch.float16)
    assert torch.equal(scaled_dot_product_attention(h, h, h, need_weights=True)[1].float().cpu(),
                       torch.full((1, 1, 2, 2), 0.5))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_cuda_head_mean_weights_kernels_match_the_formula(dtype, tol):
    """The Triton kernels (compiled, where Triton is installed) against float64, masks included."""
    import math

    from attnzoo import _triton_weights as TW

    if TW._triton() is None:
        pytest.skip("Triton is not installed")
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 4, 300, 40, generator=g), torch.randn(2, 4, 257, 40, generator=g)
    pad = torch.ones(2, 1, 1, 257, dtype=torch.bool)
    pad[0, ..., 200:] = False
    pad[1] = False  # nothing to attend to: zeros
    for mask, causal in ((None, False), (None, True), (pad, False), (pad, True)):
        ref = attention_reference(q.double(), k.double(), k.double(), mask, is_causal=causal,
                                  need_weights=True)[1].mean(1)
        got = TW.head_mean_weights(q.cuda().to(dtype), k.cuda().to(dtype), None if mask is None else mask.cuda(),
                                   causal, 1 / math.sqrt(40))
        assert got.dtype == dtype and got.isfinite().all()
        torch.testing.assert_close(got.cpu().double(), ref, atol=tol, rtol=0)


def test_cuda_mha_weights_through_the_kernels_equal_the_blocked_path(monkeypatch):
    import attnzoo._weights as AW
    import attnzoo.functional as AF

    from attnzoo import _triton_weights as TW

    torch.manual_seed(0)
    m = az.MultiHeadAttention(64, 8).cuda().half().eval()
    x = torch.randn(3, 700, 64, device="cuda", dtype=torch.float16)
    assert TW.available(x) == (TW._triton() is not None)  # half precision on CUDA: the kernels serve
    kpm = torch.zeros(3, 700, dtype=torch.bool, device="cuda")
    kpm[1, 500:] = True
    with torch.inference_mode():
        out, w = m(x, key_padding_mask=kpm, need_weights=True)
        monkeypatch.setattr(AW, "_kernels_serve", lambda *a: False)
        with AF.fused_output():  # the output on the fused kernel, the weights from the blocked pass
            out2, w2 = m(x, key_padding_mask=kpm, need_weights=True)
        out3, w3 = m(x, key_padding_mask=kpm, need_weights=True)  # both from the blocked pass
    assert torch.equal(out, out2)
    torch.testing.assert_close(out3, out, atol=2e-3, rtol=0)
    assert torch.equal(w3, w2)
    torch.testing.assert_close(w, w2, atol=1e-3, rtol=0)
