"""AttentionRecorder: unchanged outputs, shapes, names, caller's requests, hook cleanup."""

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.functional import fused_output
from attnzoo.channel import ChannelAttention, SqueezeExcite
from attnzoo.record import AttentionMap, AttentionRecorder
from attnzoo.spatial import CBAM, SpatialAttention

D = torch.float64
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for d in HOOK_DICTS:
            assert len(getattr(m, d)) == 0, (name, d)


class Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"self_attn": az.SelfAttention(16, num_heads=4, dtype=D)})
        self.decoder = nn.ModuleList([az.CrossAttention(16, context_dim=8, num_heads=2, dtype=D)])
        self.proj = nn.Linear(16, 8, dtype=D)

    def forward(self, x, ctx, kpm, causal, need=False, avg=True):
        h, w1 = self.encoder["self_attn"](x, key_padding_mask=kpm, attn_mask=causal,
                                          need_weights=need, average_attn_weights=avg)
        out, w2 = self.decoder[0](h, ctx, context_padding_mask=kpm, need_weights=need, average_attn_weights=avg)
        return out, w1, w2


def _seq2seq_inputs():
    torch.manual_seed(0)
    x, ctx = torch.randn(3, 5, 16, dtype=D), torch.randn(3, 5, 8, dtype=D)
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[1, 3:] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    return x, ctx, kpm, causal


@pytest.mark.parametrize("need,avg", [(False, True), (True, True), (True, False)])
def test_attnzoo_outputs_identical_and_caller_gets_what_it_asked(need, avg):
    model = Seq2Seq()
    args = _seq2seq_inputs()
    ref = model(*args, need=need, avg=avg)
    with AttentionRecorder(model) as rec:
        got = model(*args, need=need, avg=avg)
    assert torch.equal(got[0], ref[0])
    for g, r in zip(got[1:], ref[1:]):
        if not need:
            assert g is None and r is None
        else:
            assert g.shape == r.shape
            torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
    assert rec.names == ["encoder.self_attn", "decoder.0"]
    assert [(m.name, m.kind, m.module, m.call) for m in rec.maps] == [
        ("encoder.self_attn", "attention", "SelfAttention", 0), ("decoder.0", "attention", "CrossAttention", 0)]
    assert rec["encoder.self_attn"][0].shape == (3, 4, 5, 5) and rec["decoder.0"][0].shape == (3, 2, 5, 5)
    _assert_no_hooks(model)


def test_attnzoo_recorded_equals_per_head_weights():
    model = Seq2Seq()
    args = _seq2seq_inputs()
    with fused_output():  # outputs as in need_weights=False, so the decoder sees the same input
        _, w1, w2 = model(*args, need=True, avg=False)
    with AttentionRecorder(model) as rec:
        model(*args)
    assert torch.equal(rec["encoder.self_attn"][0], w1) and torch.equal(rec["decoder.0"][0], w2)
    assert rec["encoder.self_attn"][0][0].triu(1).abs().max() == 0  # causal: nothing above the diagonal
    assert torch.all(rec["decoder.0"][0][1, :, :, 3:] == 0)  # padded keys get no weight


def test_attnzoo_unbatched_and_weights_for():
    torch.manual_seed(1)
    mha = az.MultiHeadAttention(8, num_heads=2, dtype=D)
    x = torch.randn(6, 8, dtype=D)
    with AttentionRecorder(mha) as rec:
        mha(x)
        out, w = mha(x, need_weights=True, weights_for=slice(1, 3))
    assert rec.names == [""]
    assert rec[""][0].shape == (2, 6, 6)  # (H, L, S)
    assert rec[""][1].shape == (2, 2, 6) and w.shape == (2, 6)  # caller's rows only; caller gets the average
    assert torch.equal(rec[""][1], rec[""][0][:, 1:3])
    torch.testing.assert_close(w, rec[""][0][:, 1:3].mean(0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_mha_kwargs_and_positional(batch_first):
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, dtype=D).eval()
    x = torch.randn(3, 4, 8, dtype=D)  # (B, L, E) or (L, B, E)
    B, L = (3, 4) if batch_first else (4, 3)
    kpm = torch.zeros(B, L, dtype=torch.bool)
    kpm[0, -1] = True
    calls = [  # (args, kwargs, expected weights: None / averaged / per-head)
        ((x, x, x), {"key_padding_mask": kpm, "need_weights": False}, None),
        ((x, x, x), {"key_padding_mask": kpm}, "avg"),  # torch's defaults: need_weights=True, averaged
        ((x, x, x, kpm, True, None, False), {}, "heads"),  # positional need_weights / average_attn_weights
        ((x, x, x, kpm, False), {}, None),
    ]
    for (args, kwargs, expect), grad in zip(calls, (False, True, False, True)):
        with torch.set_grad_enabled(grad):  # no grad + eval: torch's fast path when no weights are asked
            ref = mha(*args, **kwargs)
            per_head = mha(x, x, x, key_padding_mask=kpm, need_weights=True, average_attn_weights=False)[1]
            with AttentionRecorder(mha) as rec:
                got = mha(*args, **kwargs)
        torch.testing.assert_close(got[0], ref[0])
        assert rec[""][0].shape == (B, 2, L, L)
        assert torch.equal(rec[""][0], per_head)
        if expect is None:
            assert got[1] is None
        elif expect == "avg":
            assert got[1].shape == (B, L, L)
            torch.testing.assert_close(got[1], ref[1])
        else:
            assert torch.equal(got[1], per_head)
        _assert_no_hooks(mha)


def test_torch_transformer_names_and_calls():
    torch.manual_seed(3)
    model = nn.Module()
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=False, dtype=D)
    model.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model.eval()
    x = torch.randn(5, 2, 8, dtype=D)
    ref = model.encoder(x)
    with AttentionRecorder(model) as rec:
        got = model.encoder(x)
        model.encoder(x)
    torch.testing.assert_close(got, ref)
    assert rec.names == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert [(m.name, m.call) for m in rec.maps] == [
        ("encoder.layers.0.self_attn", 0), ("encoder.layers.1.self_attn", 0),
        ("encoder.layers.0.self_attn", 1), ("encoder.layers.1.self_attn", 1)]
    assert all(m.tensor.shape == (2, 2, 5, 5) for m in rec.maps)
    torch.testing.assert_close(rec.maps[0].tensor.sum(-1), torch.ones(2, 2, 5, dtype=D))
    _assert_no_hooks(model)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SqueezeExcite(8, reduction=2)
        self.blocks = nn.Sequential(nn.ReLU(), CBAM(8, reduction=2, kernel_size=3))
        self.spatial = SpatialAttention(5)
        self.ca = ChannelAttention(8, reduction=4)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.ca(self.spatial(self.blocks(self.se(self.conv(x)))))
        return self.head(h.mean((2, 3)))


def test_gates_outputs_identical_shapes_names_values():
    torch.manual_seed(4)
    model = SmallCNN()
    x = torch.randn(2, 3, 6, 7)
    ref = model(x)
    with AttentionRecorder(model) as rec:
        got = model(x)
    assert torch.equal(got, ref)
    assert [(m.name, m.kind, m.module) for m in rec.maps] == [
        ("se", "channel", "SqueezeExcite"), ("blocks.1.channel", "channel", "ChannelAttention"),
        ("blocks.1.spatial", "spatial", "SpatialAttention"), ("spatial", "spatial", "SpatialAttention"),
        ("ca", "channel", "ChannelAttention")]
    assert rec.names == ["se", "blocks.1.channel", "blocks.1.spatial", "spatial", "ca"] and "blocks.1" not in rec
    shapes = {m.name: tuple(m.tensor.shape) for m in rec.maps}
    assert shapes == {"se": (2, 8, 1, 1), "blocks.1.channel": (2, 8, 1, 1), "blocks.1.spatial": (2, 1, 6, 7),
                      "spatial": (2, 1, 6, 7), "ca": (2, 8, 1, 1)}
    h = model.conv(x)
    assert torch.equal(rec["se"][0], model.se.gate(h))
    h = model.blocks[0](model.se(h))
    assert torch.equal(rec["blocks.1.channel"][0], model.blocks[1].channel.gate(h))
    h = model.blocks[1].channel(h)
    assert torch.equal(rec["blocks.1.spatial"][0], model.blocks[1].spatial.gate(h))
    h = model.blocks[1].spatial(h)
    assert torch.equal(rec["spatial"][0], model.spatial.gate(h))
    assert torch.equal(rec["ca"][0], model.ca.gate(model.spatial(h)))
    _assert_no_hooks(model)


class LateViewSE(SqueezeExcite):
    """A subclass whose sigmoid sees (B, C) and is viewed afterwards."""

    def gate(self, x):
        return self.gate_act(self.mlp(x.mean((2, 3)))).view(x.shape[0], -1, 1, 1)


def test_channel_gate_always_b_c_1_1():
    se = LateViewSE(6, reduction=2)
    x = torch.randn(2, 6, 3, 3)
    with AttentionRecorder(se) as rec:
        se(x)
    assert rec[""][0].shape == (2, 6, 1, 1) and torch.equal(rec[""][0], se.gate(x))


def test_hooks_removed_after_exception_and_recorder_reusable():
    model = SmallCNN()
    mha = nn.Sequential(az.SelfAttention(8, num_heads=2))
    x = torch.randn(1, 3, 4, 4)
    rec = AttentionRecorder(model)
    with pytest.raises(ZeroDivisionError):
        with rec:
            model(x)
            1 / 0
    _assert_no_hooks(model)
    assert len(rec.maps) == 5
    with rec:  # a fresh recording
        model(x)
    assert len(rec.maps) == 5 and all(m.call == 0 for m in rec.maps)
    rec.clear()
    assert rec.maps == [] and rec["se"] == []
    with pytest.raises(ValueError):  # the model's own error, raised inside the forward
        with AttentionRecorder(mha):
            mha(torch.randn(1, 3, 5))
    _assert_no_hooks(mha)
    out, w = mha[0](torch.randn(1, 3, 8))
    assert w is None


def test_nested_recorders_include_max_calls_detach():
    torch.manual_seed(5)
    model = Seq2Seq()
    args = _seq2seq_inputs()
    ref = model(*args, need=True, avg=True)
    only_dec = lambda name, module: name.startswith("decoder")  # noqa: E731
    with AttentionRecorder(model) as outer, AttentionRecorder(model, include=only_dec, max_calls=1) as inner:
        got = model(*args, need=True, avg=True)
        model(*args)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-12)
    assert [(m.name, m.call) for m in outer.maps] == [
        ("encoder.self_attn", 0), ("decoder.0", 0), ("encoder.self_attn", 1), ("decoder.0", 1)]
    assert [(m.name, m.call) for m in inner.maps] == [("decoder.0", 0)]
    assert "encoder.self_attn" not in inner
    with pytest.raises(KeyError):
        inner["encoder.self_attn"]
    assert torch.equal(inner["decoder.0"][0], outer["decoder.0"][0])
    assert not outer.maps[0].tensor.requires_grad
    _assert_no_hooks(model)
    with AttentionRecorder(model, detach=False, to_cpu=True) as rec:
        model(*args)
    assert rec.maps[0].tensor.requires_grad and rec.maps[0].tensor.device.type == "cpu"
    assert isinstance(rec.maps[0], AttentionMap)


def test_recorder_cannot_enter_twice_and_checks_arguments():
    model = Seq2Seq()
    rec = AttentionRecorder(model)
    with rec:
        with pytest.raises(RuntimeError):
            rec.__enter__()
    _assert_no_hooks(model)
    def include(name, module):  # fails after the first module was hooked
        if name == "decoder.0":
            raise LookupError(name)
        return True

    with pytest.raises(LookupError):
        with AttentionRecorder(model, include=include):
            pass
    _assert_no_hooks(model)
    with pytest.raises(TypeError):
        AttentionRecorder(lambda x: x)
    with pytest.raises(ValueError):
        AttentionRecorder(model, max_calls=0)
