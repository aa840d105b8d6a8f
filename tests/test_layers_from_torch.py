"""TransformerEncoderLayer/DecoderLayer.from_torch: the exact copy of torch's layer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.transformer import TransformerDecoderLayer, TransformerEncoderLayer

D = torch.float64
CONFIGS = [
    {"norm_first": False, "activation": "relu", "batch_first": True, "layer_norm_eps": 1e-5, "bias": True},
    {"norm_first": True, "activation": "gelu", "batch_first": False, "layer_norm_eps": 1e-3, "bias": True},
    {"norm_first": False, "activation": F.silu, "batch_first": False, "layer_norm_eps": 1e-6, "bias": False},
]


def _inputs(batch_first, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, mem = torch.randn(2, 5, 16, generator=g, dtype=D), torch.randn(2, 4, 16, generator=g, dtype=D)
    return (x, mem) if batch_first else (x.transpose(0, 1), mem.transpose(0, 1))


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_encoder_from_torch_is_exact(cfg, mode):
    torch.manual_seed(0)
    theirs = getattr(nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, dtype=D, **cfg), mode)()
    ours = TransformerEncoderLayer.from_torch(theirs)
    assert ours.training == theirs.training and ours.self_attn.batch_first == cfg["batch_first"]
    x, _ = _inputs(cfg["batch_first"])
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    torch.testing.assert_close(ours(x, src_key_padding_mask=pad), theirs(x, src_key_padding_mask=pad))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_decoder_from_torch_is_exact_with_torchs_call_convention(cfg):
    torch.manual_seed(0)
    theirs = nn.TransformerDecoderLayer(16, 4, 24, dropout=0.0, dtype=D, **cfg).eval()
    ours = TransformerDecoderLayer.from_torch(theirs)
    x, mem = _inputs(cfg["batch_first"])
    # torch's default: no causal mask unless tgt_mask says so; here tgt_is_causal=False gives it
    torch.testing.assert_close(ours(x, mem, tgt_is_causal=False), theirs(x, mem))
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=D)
    torch.testing.assert_close(ours(x, mem), theirs(x, mem, tgt_mask=causal, tgt_is_causal=True))


def test_from_torch_keeps_dropout_and_refuses_other_modules():
    theirs = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.25)
    ours = TransformerEncoderLayer.from_torch(theirs)
    assert ours.dropout.p == ours.dropout1.p == ours.self_attn.dropout == 0.25
    with pytest.raises(TypeError, match="must be a torch.nn.TransformerEncoderLayer, got TransformerDecoderLayer"):
        TransformerEncoderLayer.from_torch(nn.TransformerDecoderLayer(16, 4))
