"""AttentionRecorder: unchanged outputs, shapes, names, caller's requests, hook cleanup."""

import copy

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


# --------------------------------------------------------------------------- gates by protocol
class TokenGate(nn.Module):
    """A gate the recorder was never told about: it only follows the protocol, ``gate(x)``."""

    gate_kind = "token"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1, dtype=D)

    def gate(self, x):
        return torch.sigmoid(self.score(x))  # (B, L, 1)

    def forward(self, x):
        return x * self.gate(x)


class PlainGate(nn.Module):
    """No declared kind, and a gate of x's own shape: neither channel nor spatial, kind "gate"."""

    def gate(self, x):
        return torch.sigmoid(x)

    def forward(self, x):
        return x * self.gate(x)


class Router(nn.Module):
    """``gate`` is a submodule here (a mixture-of-experts router), not the protocol's method."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(8, 2, dtype=D)

    def forward(self, x):
        return self.gate(x)


def test_any_module_with_a_gate_method_is_recorded():
    torch.manual_seed(7)
    model = nn.Sequential(TokenGate(8), Router(), PlainGate())
    x = torch.randn(3, 5, 8, dtype=D)
    ref = model(x)
    with AttentionRecorder(model) as rec:
        got = model(x)
        direct = model[0].gate(x)  # a direct call is recorded too
    assert torch.equal(got, ref)
    assert rec.names == ["0", "2"]  # the router is not a gate
    assert [(m.name, m.kind, m.module, m.call) for m in rec.maps] == [
        ("0", "token", "TokenGate", 0), ("2", "gate", "PlainGate", 0), ("0", "token", "TokenGate", 1)]
    assert torch.equal(rec["0"][0], torch.sigmoid(model[0].score(x))) and torch.equal(rec["0"][1], direct)
    assert rec["2"][0].shape == (3, 5, 2)
    _assert_no_hooks(model)
    assert all("gate" not in m.__dict__ for m in model.modules())  # the patches are gone
    assert isinstance(model[1].gate, nn.Linear)


class NonLocalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.block = az.NonLocal(8)
        nn.init.normal_(self.block.bn.weight)  # not the identity start: the output depends on the map

    def forward(self, x):
        return self.block(self.conv(x))


def test_nonlocal_is_recorded_from_its_input_once_per_forward():
    """NonLocal's forward never forms its map: each recorder calls the class's `gate` on the
    block's input after the forward. Output and BatchNorm statistics as unrecorded; one record
    per forward and recorder (nested ones too), none past `max_calls`, none from its SDPA call."""
    torch.manual_seed(5)
    model = NonLocalNet().train()
    plain = copy.deepcopy(model)
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    ref = [plain(x) for _ in range(3)]
    with AttentionRecorder(model, max_calls=2) as outer, AttentionRecorder(model) as inner:
        got = [model(x) for _ in range(3)]
    assert all(torch.equal(g, r) for g, r in zip(got, ref))
    for stat in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model.block.bn, stat), getattr(plain.block.bn, stat))
    assert [(m.name, m.kind, m.module, m.call) for m in inner.maps] == [("block", "gate", "NonLocal", c) for c in range(3)]
    assert [m.call for m in outer.maps] == [0, 1] and outer.names == inner.names == ["block"]
    assert torch.equal(inner["block"][0], model.block.gate(model.conv(x)).detach())
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(outer.maps, inner.maps))
    _assert_no_hooks(model)
    assert "gate" not in model.block.__dict__


# --------------------------------------------------------------------------- threads
class Mixed(nn.Module):
    """attnzoo attention, a plain SDPA call (the function mode and the module stack), a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = az.SelfAttention(16, num_heads=4, dtype=D)
        self.qkv = nn.Linear(16, 48, dtype=D)
        self.gate = TokenGate(16)

    def forward(self, x):
        h, _ = self.attn(x)
        q, k, v = self.qkv(h).view(*h.shape[:2], 3, 4, 4).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.gate(h + y.transpose(1, 2).reshape(h.shape))


def test_recorder_records_only_its_thread_other_threads_unaffected():
    import threading

    torch.manual_seed(8)
    model = Mixed()
    x = torch.randn(2, 6, 16, dtype=D)
    ref = model(x)
    started, stop, seen, failures = threading.Event(), threading.Event(), [0], []

    def other() -> None:  # runs the same model the whole time, also while it is recorded
        try:
            while not stop.is_set():
                out = model(x)
                assert torch.equal(out, ref)
                assert not torch.overrides._is_torch_function_mode_enabled()
                seen[0] += 1
                started.set()
        except BaseException as e:  # reported by the main thread
            failures.append(e)
            started.set()

    worker = threading.Thread(target=other)
    worker.start()
    try:
        assert started.wait(60)
        before = seen[0]
        rec = AttentionRecorder(model)
        with rec:
            for _ in range(30):
                assert torch.equal(model(x), ref)
        during = seen[0] - before
    finally:
        stop.set()
        worker.join(60)
    assert not failures, failures[0]
    assert during > 0  # the other thread really ran the model meanwhile
    names = ["attn", "gate", ""]  # module order; "" = the root's SDPA call
    assert rec.names == ["attn", "gate", ""]
    assert [m.name for m in rec.maps] == ["attn", "", "gate"] * 30
    assert [m.call for m in rec.maps] == [c for c in range(30) for _ in names]
    assert not torch.overrides._is_torch_function_mode_enabled()
    _assert_no_hooks(model)
    assert all("gate" not in m.__dict__ and "attend" not in m.__dict__ for m in model.modules())


def test_two_threads_cannot_record_one_model_at_once():
    import threading

    model = Mixed()
    inside, done, errors = threading.Event(), threading.Event(), []

    def hold() -> None:
        with AttentionRecorder(model):
            inside.set()
            done.wait(60)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert inside.wait(60)
        with pytest.raises(RuntimeError, match="being recorded in another thread"):
            with AttentionRecorder(model.attn):
                pass
    finally:
        done.set()
        worker.join(60)
    _assert_no_hooks(model)
    with AttentionRecorder(model) as rec:  # free again
        model(torch.randn(1, 3, 16, dtype=D))
    assert rec.names == ["attn", "gate", ""]
