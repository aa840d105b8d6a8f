"""Edge cases the randomised parity tests do not reach, each against a float64 formula
written here or against torch: dropout with causal weights, a bool padding mask mixed with
a float attention mask, from_torch with non-zero biases and distinct query/key/value, and
the self-attention GEMM path under FSDP2's per-argument input casts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import attnzoo as az
from attnzoo.functional import scaled_dot_product_attention
from attnzoo.transformer import TransformerDecoderLayer, TransformerEncoderLayer

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def softmax_reference(q: Tensor, k: Tensor, bias: Tensor | None = None, causal: bool = False) -> Tensor:
    """softmax(q kᵀ / √E + bias) with the causal (top-left) mask: (*, L, S) in float64."""
    s = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.size(-1))
    if bias is not None:
        s = s + bias.double()
    if causal:
        L, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1)


def assert_dropped_out_of(w: Tensor, p_ref: Tensor, p: float) -> None:
    """Every weight is 0 (dropped) or the reference weight / (1 - p) (kept), and some were dropped."""
    kept = w != 0
    torch.testing.assert_close(w[kept], p_ref[kept] / (1 - p))
    assert (~kept & (p_ref > 0)).any()  # dropout acted


@pytest.mark.parametrize("L,S", [(6, 6), (4, 7)])
def test_dropout_with_causal_weights_functional(L, S):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, L, 5, dtype=D), torch.randn(2, 3, S, 5, dtype=D), torch.randn(2, 3, S, 4, dtype=D)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.4, is_causal=True, need_weights=True)
    assert torch.all(w.triu(1) == 0)  # causal: nothing above the diagonal, dropout or not
    assert_dropped_out_of(w, softmax_reference(q, k, causal=True), 0.4)
    torch.testing.assert_close(out, w @ v)


def merge_heads_out(mha: az.MultiHeadAttention, ctx: Tensor) -> Tensor:
    """(B, H, L, hs) -> out_proj((B, L, E))."""
    B, H, L, hs = ctx.shape
    return F.linear(ctx.transpose(1, 2).reshape(B, L, H * hs), mha.out_proj.weight, mha.out_proj.bias)


def test_dropout_with_causal_weights_module_in_train_mode():
    torch.manual_seed(0)
    mha = az.MultiHeadAttention(8, 2, dropout=0.4, dtype=D).train()
    x = torch.randn(2, 6, 8, dtype=D)
    out, w = mha(x, need_weights=True, average_attn_weights=False, is_causal=True)  # (B, H, L, S)
    assert torch.all(w.triu(1) == 0)
    q, k, v = mha.project_qkv(x)  # (B, H, L, hs) ×3
    assert_dropped_out_of(w, softmax_reference(q, k, causal=True), 0.4)
    torch.testing.assert_close(out, merge_heads_out(mha, w @ v))


@pytest.mark.parametrize("batch_first", [True, False])
def test_bool_padding_mask_with_float_attn_mask_equals_the_float_bias(batch_first):
    torch.manual_seed(0)
    B, L, S, E, H = 3, 4, 6, 8, 2
    mha = az.MultiHeadAttention(E, H, batch_first=batch_first, dtype=D).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    q, kv = torch.randn(B, L, E, dtype=D), torch.randn(B, S, E, dtype=D)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [True] + [False] * 5])  # (B, S)
    attn = torch.randn(L, S, dtype=D)  # float: added to the scores
    pad_bias = torch.zeros(B, S, dtype=D).masked_fill(pad, float("-inf"))
    lay = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))
    mixed, w_mixed = mha(lay(q), lay(kv), lay(kv), key_padding_mask=pad, attn_mask=attn,
                         need_weights=True, average_attn_weights=False)
    floats, w_floats = mha(lay(q), lay(kv), lay(kv), key_padding_mask=pad_bias, attn_mask=attn,
                           need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(mixed, floats)
    torch.testing.assert_close(w_mixed, w_floats)
    pq, pk, pv = mha.project_qkv(q, kv, kv)
    want = softmax_reference(pq, pk, attn + pad_bias[:, None, None, :])  # (B, H, L, S)
    torch.testing.assert_close(w_mixed, want)
    torch.testing.assert_close(lay(mixed), merge_heads_out(mha, want @ pv))


def randomise_biases(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return m


@pytest.mark.parametrize("kvdims", [None, (5, 7)])
def test_from_torch_with_nonzero_biases_and_distinct_query_key_value(kvdims):
    torch.manual_seed(0)
    kdim, vdim = kvdims or (None, None)
    theirs = randomise_biases(nn.MultiheadAttention(8, 2, kdim=kdim, vdim=vdim, batch_first=True, dtype=D)).eval()
    ours = az.MultiHeadAttention.from_torch(theirs)
    q = torch.randn(2, 4, 8, dtype=D)
    k, v = torch.randn(2, 5, kdim or 8, dtype=D), torch.randn(2, 5, vdim or 8, dtype=D)  # three tensors
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for args in ((q, k, v), (q, q, q)) if kvdims is None else ((q, k, v),):
        o1, w1 = theirs(*args, key_padding_mask=pad[:, : args[1].size(1)] if args[1] is k else None)
        o2, w2 = ours(*args, key_padding_mask=pad[:, : args[1].size(1)] if args[1] is k else None,
                      need_weights=True)
        torch.testing.assert_close(o2, o1, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(w2, w1, atol=1e-12, rtol=1e-12)


def test_transformer_layers_from_torch_with_nonzero_biases():
    torch.manual_seed(0)
    enc = randomise_biases(nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True, dtype=D)).eval()
    dec = randomise_biases(nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True, dtype=D)).eval()
    x, mem = torch.randn(2, 5, 8, dtype=D), torch.randn(2, 3, 8, dtype=D)
    torch.testing.assert_close(TransformerEncoderLayer.from_torch(enc)(x), enc(x), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(TransformerDecoderLayer.from_torch(dec)(x, mem, tgt_is_causal=False), dec(x, mem),
                               atol=1e-12, rtol=1e-12)


class LinearCount(TorchFunctionMode):
    """Counts ``F.linear`` calls: self-attention projects q, k and v in one."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += func is F.linear
        return func(*args, **(kwargs or {}))


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")  # torch's note on any view output
def test_self_attention_gemm_under_fsdp2_input_casts(one_rank_group):
    """FSDP2 with a param_dtype casts each forward argument on its own, so ``mha(x, x, x)``
    receives three tensors (three input GEMMs); ``mha(x)`` keeps the one-GEMM path."""
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("fully_shard needs torch>=2.6")
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    mha = az.MultiHeadAttention(8, 2)
    plain = az.MultiHeadAttention(8, 2, dtype=D)
    plain.load_state_dict(mha.state_dict())
    fsdp.fully_shard(mha, mesh=init_device_mesh("cpu", (1,)), mp_policy=fsdp.MixedPrecisionPolicy(param_dtype=D))
    x = torch.randn(2, 3, 8)  # float32: cast to float64 once per argument
    counts = []
    for args in ((x,), (x, x, x)):
        with LinearCount() as c:
            out, _ = mha(*args)
        counts.append(c.n)
        torch.testing.assert_close(out, plain(x.double())[0])
    assert counts == [2, 4]  # in_proj once + out_proj; or q, k, v apart + out_proj


def test_aliases_of_the_query_are_not_taken_for_self_attention():
    """Same storage, shape and dtype is not the same tensor: a detached key gets no gradient
    to the query, so only ``query is key is value`` may take the one-GEMM path."""
    torch.manual_seed(0)
    mha = az.MultiHeadAttention(8, 2, dtype=D)
    x = torch.randn(2, 3, 8, dtype=D, requires_grad=True)
    k = x.detach()  # aliases x's storage
    mha(x, k, k)[0].sum().backward()
    g = x.grad.clone()
    x.grad = None
    q_only = x.detach().clone().requires_grad_()  # own storage
    mha(q_only, k, k)[0].sum().backward()
    torch.testing.assert_close(g, q_only.grad)
