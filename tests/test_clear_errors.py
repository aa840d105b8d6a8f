"""Inputs that used to fail deep inside torch now fail at the door, naming the argument:
masks on another device than the input, a ring-attention layout of the wrong type, and
greedy decoding of meta tensors (which have no values to read)."""

from __future__ import annotations

import re

import pytest
import torch

import attnzoo as az
from attnzoo.distributed import ShardLayout, ring_attention

pytestmark = pytest.mark.usefixtures("single_thread")

META = torch.device("meta")


def test_temporal_padding_mask_on_another_device():
    m = az.TemporalAttention(8, device=META)
    x = torch.randn(2, 5, 8, device=META)
    with pytest.raises(ValueError, match=re.escape("padding_mask is on device cpu but x is on meta; "
                                                   "move it with padding_mask.to(x.device)")):
        m(x, padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    pooled, weights = m(x, padding_mask=torch.zeros(2, 5, dtype=torch.bool, device=META))  # same device: fine
    assert pooled.shape == (2, 8) and weights.shape == (2, 5)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
@pytest.mark.parametrize("which", ["key_padding_mask", "attn_mask"])
def test_mha_masks_on_another_device(which, mask_dtype):
    mha = az.MultiHeadAttention(8, 2, device=META)
    x = torch.randn(2, 3, 8, device=META)
    shape = (2, 3) if which == "key_padding_mask" else (3, 3)
    with pytest.raises(ValueError, match=re.escape(f"{which} is on device cpu but query is on meta; "
                                                   f"move it with {which}.to(query.device)")):
        mha(x, x, x, **{which: torch.zeros(shape, dtype=mask_dtype)})
    out, _ = mha(x, x, x, **{which: torch.zeros(shape, dtype=mask_dtype, device=META)})
    assert out.shape == (2, 3, 8)
    layer = az.TransformerEncoderLayer(8, 2, 16, device=META)  # hands its masks to MultiHeadAttention
    with pytest.raises(ValueError, match="key_padding_mask is on device cpu but query is on meta"):
        layer(x, src_key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("layout", [(6, 1), None, "zigzag"])
def test_ring_attention_layout_type(layout, one_rank_group):
    q = torch.randn(1, 2, 6, 4)
    assert ring_attention(q, q, q, ShardLayout(length=6, world=1, zigzag=False)).shape == q.shape
    with pytest.raises(TypeError, match=re.escape(
            f"layout must be an attnzoo.distributed.ShardLayout (e.g. ShardLayout(length, world)), "
            f"got {type(layout).__name__}")):
        ring_attention(q, q, q, layout)


def tiny_seq2seq() -> az.Seq2SeqTransformer:
    torch.manual_seed(0)
    return az.Seq2SeqTransformer(11, 12, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=16, max_len=8)


def test_generate_refuses_meta_tensors_naming_the_argument():
    model = tiny_seq2seq()
    src = torch.randint(1, 11, (2, 5))
    want = model.generate(src, 3, 1, 2)  # real tensors: works
    with pytest.raises(ValueError, match=re.escape(
            "src is on the meta device, which holds no values; generate reads the tokens it produces "
            "(argmax, eos_id), so src and the model must be real tensors")):
        model.generate(src.to(META), 3, 1, 2)
    with torch.device(META):
        meta_model = az.Seq2SeqTransformer(11, 12, d_model=8, nhead=2, num_encoder_layers=1,
                                           num_decoder_layers=1, dim_feedforward=16, max_len=8)
    with pytest.raises(ValueError, match=re.escape(
            "src is on device cpu but the Seq2SeqTransformer's parameters are on meta; move the model or "
            "src (src.to(device)); a model on the meta device needs real weights first (to_empty + load_state_dict)")):
        meta_model.generate(src, 3, 1, 2)
    assert torch.equal(model.generate(src, 3, 1, 2), want)
