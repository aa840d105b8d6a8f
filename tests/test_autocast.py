"""Sequence modules under torch.autocast("cpu", bfloat16): train and eval, against float32 and torch."""

import copy

import pytest
import torch
from torch import nn

import attnzoo as az

_g = torch.Generator().manual_seed(0)
X = torch.randn(2, 6, 16, generator=_g)
PAD = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])  # True = padding
FLOAT_MASK = torch.randn(6, 6, generator=_g)
BOOL_MASK = torch.rand(6, 6, generator=_g) < 0.3
BOOL_MASK[:, 0] = False

CASES = {
    "mha, dropout, float mask + padding, weights": (
        lambda: az.MultiHeadAttention(16, 4, dropout=0.1),
        lambda m, h: m(h, key_padding_mask=PAD, attn_mask=FLOAT_MASK, need_weights=True)[0],
    ),
    "mha, bool mask + causal, gqa": (
        lambda: az.MultiHeadAttention(16, 4, num_kv_heads=2),
        lambda m, h: m(h, key_padding_mask=PAD, attn_mask=BOOL_MASK, is_causal=True)[0],
    ),
    "self-attention": (lambda: az.SelfAttention(16, 4), lambda m, h: m(h, key_padding_mask=PAD)[0]),
    "cross-attention": (lambda: az.CrossAttention(16, 16, 4),
                        lambda m, h: m(h, h[:, :5], context_padding_mask=PAD[:, :5])[0]),
    "encoder layer": (lambda: az.TransformerEncoderLayer(16, 4, 32),
                      lambda m, h: m(h, src_mask=FLOAT_MASK, src_key_padding_mask=PAD)),
    "decoder layer": (lambda: az.TransformerDecoderLayer(16, 4, 32),
                      lambda m, h: m(h, h, tgt_mask=BOOL_MASK, memory_key_padding_mask=PAD)),
}


def _net(build):
    torch.manual_seed(0)
    return nn.ModuleDict({"proj": nn.Linear(16, 16), "attn": build()})


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_autocast_trains_and_matches_float32(name, mode):
    build, call = CASES[name]
    net = getattr(_net(build), mode)()
    reference = copy.deepcopy(net)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(net["attn"], net["proj"](X))
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    torch.manual_seed(1)
    expected = call(reference["attn"], reference["proj"](X))
    expected.square().sum().backward()
    if mode == "train" and "dropout" in name:
        return  # dropout draws differ between the two precisions
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)
    for (n, p), q in zip(net.named_parameters(), reference.parameters()):
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.95, n


def test_bfloat16_autocast_equals_torch_multihead_attention():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(16, 4, batch_first=True)
    ours = az.MultiHeadAttention.from_torch(theirs)
    proj = nn.Linear(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = proj(X)
        expected, exp_w = theirs(h, h, h, key_padding_mask=PAD, attn_mask=BOOL_MASK)
        got, w = ours(h, key_padding_mask=PAD, attn_mask=BOOL_MASK, need_weights=True)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(w.float(), exp_w.float(), atol=2e-2, rtol=2e-2)


def test_seq2seq_trains_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = az.Seq2SeqTransformer(11, 11, d_model=16, nhead=4, dim_feedforward=32, dropout=0.0)
    reference = copy.deepcopy(model)
    src = torch.randint(3, 11, (2, 5), generator=_g)
    src[1, 3:] = 0  # padding
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, src)
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), src.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(logits.float(), reference(src, src), atol=0.15, rtol=0.05)
