"""AttentionRecorder on F.scaled_dot_product_attention calls and on cached decoding steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnzoo as az
from attnzoo.functional import attention_reference
from attnzoo.record import AttentionRecorder
from test_record import _assert_no_hooks  # the hook check the recorder's own tests use

D = torch.float64


def _assert_clean(model: nn.Module) -> None:
    """No hook, no ``attend`` instance attribute, no torch-function mode left behind."""
    _assert_no_hooks(model)
    for name, m in model.named_modules():
        assert "attend" not in m.__dict__, name
    assert not torch.overrides._is_torch_function_mode_enabled()


class Attend(nn.Module):
    """A user's block: calls SDPA directly, positionally or by keyword."""

    def __init__(self, positional: bool = False) -> None:
        super().__init__()
        self.positional = positional

    def forward(self, q, k, v, mask=None, causal=False, scale=None, gqa=False):
        if self.positional:
            return F.scaled_dot_product_attention(q, k, v, mask, 0.0, causal, scale=scale, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=gqa)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Attend(), Attend(positional=True)])
        self.proj = nn.Linear(4, 4, dtype=D)

    def forward(self, q, k, v, **kw):
        a = self.blocks[0](q, k, v, **kw)
        b = self.blocks[1](q, k, v, **kw)
        c = F.scaled_dot_product_attention(q, k, v, enable_gqa=kw.get("gqa", False))  # the root module's own call
        return self.proj(a + b + c)


def _qkv(hkv=4, L=5, S=6):
    torch.manual_seed(0)
    return torch.randn(2, 4, L, 4, dtype=D), torch.randn(2, hkv, S, 4, dtype=D), torch.randn(2, hkv, S, 4, dtype=D)


def _bool_mask():
    m = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    m[..., 0] = True
    return m


@pytest.mark.parametrize("case", ["plain", "bool", "float", "causal", "gqa_causal_scale"])
def test_user_module_weights_names_and_outputs(case):
    q, k, v = _qkv(hkv=2 if case.startswith("gqa") else 4)
    kw = {"plain": {}, "bool": {"mask": _bool_mask()},
          "float": {"mask": torch.randn(5, 6, dtype=D)},
          "causal": {"causal": True}, "gqa_causal_scale": {"causal": True, "scale": 0.3, "gqa": True}}[case]
    net = Net()
    ref = net(q, k, v, **kw)
    with AttentionRecorder(net) as rec:
        out = net(q, k, v, **kw)
        F.scaled_dot_product_attention(q, q, q)  # outside the model's forward: not recorded
    assert torch.equal(out, ref)
    assert [(m.name, m.kind, m.module, m.call) for m in rec.maps] == [
        ("blocks.0", "attention", "Attend", 0), ("blocks.1", "attention", "Attend", 0), ("", "attention", "Net", 0)]
    assert rec.names == ["blocks.0", "blocks.1", ""]
    _, want = attention_reference(q, k, v, kw.get("mask"), 0.0, kw.get("causal", False), kw.get("scale"),
                                  kw.get("gqa", False), need_weights=True)
    for m in rec.maps[:2]:
        assert m.tensor.shape == (2, 4, 5, 6)
        torch.testing.assert_close(m.tensor, want, rtol=0, atol=1e-12)
    _assert_clean(net)


def test_options_include_max_calls_rows_average_nesting():
    q, k, v = _qkv()
    net = Net()
    only_first = lambda name, module: name == "blocks.0"  # noqa: E731
    with AttentionRecorder(net) as outer, AttentionRecorder(net, include=only_first, max_calls=1,
                                                              rows=torch.tensor([4, 0]), average_heads=True) as inner:
        net(q, k, v, causal=True)
        net(q, k, v, causal=True)
    assert [(m.name, m.call) for m in outer.maps] == [
        (n, c) for c in range(2) for n in ("blocks.0", "blocks.1", "")]
    assert [(m.name, m.call) for m in inner.maps] == [("blocks.0", 0)]
    torch.testing.assert_close(inner["blocks.0"][0], outer["blocks.0"][0][:, :, [4, 0]].mean(1), rtol=0, atol=1e-12)
    with AttentionRecorder(net, sdpa=False) as off:
        net(q, k, v)
    assert off.maps == [] and off.names == []
    _assert_clean(net)


def test_memory_cap_raises_before_computing_and_cleans_up():
    q, k, v = _qkv()
    net = Net()
    one = 2 * 4 * 5 * 6 * 8  # bytes of one (B, H, L, S) float64 record
    with pytest.raises(RuntimeError, match=r"recording 'blocks.1' \(call 0\) needs 0.0 MiB more.*max_bytes=2000"):
        with AttentionRecorder(net, max_bytes=one + 80) as rec:
            net(q, k, v)
    assert [m.name for m in rec.maps] == ["blocks.0"]
    _assert_clean(net)
    with AttentionRecorder(net, max_bytes=one, dtype=torch.float32, rows=slice(0, 2)) as rec:
        net(q, k, v)  # float32 and two rows: all three fit
    assert len(rec.maps) == 3 and rec.maps[0].tensor.dtype == torch.float32
    for bad, err in [({"max_bytes": 0}, ValueError), ({"rows": [1, 2]}, TypeError), ({"dtype": torch.int64}, TypeError)]:
        with pytest.raises(err, match=next(iter(bad))):
            AttentionRecorder(net, **bad)


def _seq2seq():
    torch.manual_seed(3)
    model = az.Seq2SeqTransformer(11, 13, d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                                  dim_feedforward=32, dropout=0.0, max_len=16).eval()
    src = torch.randint(3, 11, (2, 7))
    src[1, 5:] = 0  # padding
    return model, src


def test_attnzoo_models_are_not_recorded_twice():
    model, src = _seq2seq()
    tgt = torch.randint(3, 13, (2, 4))
    ref = model(src, tgt)
    with AttentionRecorder(model) as rec:
        out = model(src, tgt)
    assert torch.equal(out, ref)
    mha = [n for n, m in model.named_modules() if isinstance(m, az.MultiHeadAttention)]
    assert rec.names == mha and [m.name for m in rec.maps] == mha  # one record per module: no SDPA duplicate
    _assert_clean(model)


def test_generate_records_each_step_self_and_cross_attention():
    model, src = _seq2seq()
    n = 5
    ref = model.generate(src, n, bos_id=1, eos_id=2)
    with AttentionRecorder(model) as rec:
        tokens = model.generate(src, n, bos_id=1, eos_id=2)
    assert torch.equal(tokens, ref)
    _assert_clean(model)
    T = tokens.size(1)
    for i in range(2):
        assert len(rec[f"encoder_layers.{i}.self_attn"]) == 1
        assert len(rec[f"decoder_layers.{i}.self_attn"]) == T == len(rec[f"decoder_layers.{i}.multihead_attn"])
    steps = [m.name for m in rec.maps[2:]]
    assert steps == [f"decoder_layers.{i}.{a}" for _ in range(T) for i in range(2) for a in ("self_attn", "multihead_attn")]
    # the oracle: a teacher-forced forward over <bos> + the generated tokens (uncached)
    tgt = torch.cat([torch.ones(2, 1, dtype=torch.long), tokens[:, :-1]], dim=1)  # (B, T)
    with AttentionRecorder(model) as full:
        model(src, tgt)
    live = (tgt != 0).cumprod(dim=1).bool()  # (B, T): before a finished row's padding (masked in `full`)
    for i in range(2):
        for t in range(T):
            self_t = rec[f"decoder_layers.{i}.self_attn"][t]
            cross_t = rec[f"decoder_layers.{i}.multihead_attn"][t]
            assert self_t.shape == (2, 2, 1, t + 1) and cross_t.shape == (2, 2, 1, 7)
            b = live[:, t]
            torch.testing.assert_close(self_t[b, :, 0], full[f"decoder_layers.{i}.self_attn"][0][b, :, t, : t + 1])
            torch.testing.assert_close(cross_t[b, :, 0], full[f"decoder_layers.{i}.multihead_attn"][0][b, :, t])
    assert live.sum() > T  # both rows were compared at several steps
    assert torch.all(rec["decoder_layers.0.multihead_attn"][0][1, ..., 5:] == 0)  # padded source keys


def test_save_load_round_trip(tmp_path):
    model, src = _seq2seq()
    with AttentionRecorder(model, average_heads=True) as rec:
        model.generate(src, 3, bos_id=1, eos_id=2)
    q, k, v = _qkv()
    with AttentionRecorder(Net().to(torch.bfloat16)) as rec16:  # numpy has no bfloat16
        rec16.model(q.bfloat16(), k.bfloat16(), v.bfloat16())
    for r in (rec, rec16):
        path = r.save(tmp_path / "rec.npz")
        back = AttentionRecorder.load(path)
        assert back.names == r.names and back.model is None
        assert [(m.name, m.kind, m.module, m.call) for m in back.maps] == [
            (m.name, m.kind, m.module, m.call) for m in r.maps]
        for a, b in zip(back.maps, r.maps):
            assert a.tensor.dtype == b.tensor.dtype and torch.equal(a.tensor, b.tensor)
        assert torch.equal(back[r.names[-1]][-1], r[r.names[-1]][-1])
    assert rec16.maps[0].tensor.dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="loaded from a file and has no model"):
        with back:
            pass
    (tmp_path / "other.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="path must be an attention recording written by AttentionRecorder.save"):
        AttentionRecorder.load(tmp_path / "other.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.npz", "rec.npz"]  # no temporary left


def test_rows_and_average_on_module_hooks():
    torch.manual_seed(6)
    mha = az.SelfAttention(8, num_heads=2, dtype=D)
    torch_mha = nn.MultiheadAttention(8, 2, batch_first=True, dtype=D)
    x = torch.randn(2, 5, 8, dtype=D)
    with AttentionRecorder(mha) as full, AttentionRecorder(mha, rows=slice(1, 3)) as rows:
        mha(x)  # no weights asked: the recorder's rows are computed alone (weights_for)
        _, w = mha(x, need_weights=True, average_attn_weights=False)  # the caller still gets every row
        mha(x, weights_for=range(4, 5))  # the caller's own rows win
    assert w.shape == (2, 2, 5, 5) and torch.equal(w, full[""][1])
    assert [t.shape for t in rows[""]] == [(2, 2, 2, 5), (2, 2, 2, 5), (2, 2, 1, 5)]
    for got, ref in zip(rows[""][:2], full[""][:2]):
        torch.testing.assert_close(got, ref[:, :, 1:3], rtol=0, atol=1e-12)
    with AttentionRecorder(torch_mha) as full, AttentionRecorder(torch_mha, rows=torch.tensor([0, 4]),
                                                                 average_heads=True) as small:
        torch_mha(x, x, x)
    assert small[""][0].shape == (2, 2, 5)
    torch.testing.assert_close(small[""][0], full[""][0][:, :, [0, 4]].mean(1), rtol=0, atol=1e-12)


def test_rows_bounds_checked_and_named():
    q, k, v = _qkv(L=6)
    net = Net()
    mha = az.SelfAttention(4, num_heads=2, dtype=D)
    x = torch.randn(2, 6, 4, dtype=D)
    for model, call in ((net, lambda: net(q, k, v)), (mha, lambda: mha(x)), (mha, lambda: mha(x, need_weights=True))):
        for bad, shown in ((range(10, 12), r"range\(10, 12\)"), (range(-7, -5), r"range\(-7, -5\)"),
                           (slice(10, 12), r"slice\(10, 12, None\) \(start 10\)"),
                           (torch.tensor([6]), r"\[6\]")):
            with pytest.raises(ValueError, match=rf"^rows indexes query rows 0..5, got {shown}"):
                with AttentionRecorder(model, rows=bad):
                    call()
            _assert_clean(model)
    # negative entries count from the end, as in an index tensor; a slice's stop is clamped
    with AttentionRecorder(net) as full, AttentionRecorder(net, rows=range(-2, 0)) as last, \
            AttentionRecorder(net, rows=slice(-2, 100)) as sliced:
        net(q, k, v)
    for name in ("blocks.0", ""):
        assert last[name][0].shape == (2, 4, 2, 6)
        torch.testing.assert_close(last[name][0], full[name][0][:, :, 4:], rtol=0, atol=1e-12)
        assert torch.equal(sliced[name][0], last[name][0])
    with AttentionRecorder(mha) as full, AttentionRecorder(mha, rows=range(-2, 0)) as last:
        mha(x)
    torch.testing.assert_close(last[""][0], full[""][0][:, :, 4:], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"^rows must be a slice with a nonzero step, got slice\(0, 4, 0\)"):
        AttentionRecorder(net, rows=slice(0, 4, 0))


def test_weights_for_errors_name_weights_for():
    q, k, v = _qkv(L=6)
    with pytest.raises(ValueError, match=r"^weights_for must be a slice with a nonzero step, got slice\(0, 4, 0\)"):
        az.functional.sdpa(q, k, v, need_weights=True, weights_for=slice(0, 4, 0))
    with pytest.raises(ValueError, match=r"^weights_for indexes query rows 0..5, got range\(10, 12\)"):
        az.functional.sdpa(q, k, v, need_weights=True, weights_for=range(10, 12))
    _, w = az.functional.sdpa(q, k, v, need_weights=True, weights_for=range(-2, 0))
    ref = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)  # (B, H, L, S), E = 4
    torch.testing.assert_close(w, ref[:, :, 4:], rtol=0, atol=1e-12)


def _rewrite_meta(src, dest, edit):
    """A copy of the recording ``src`` whose JSON metadata went through ``edit(meta)``."""
    import json

    import numpy as np

    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")[()]))
    edit(meta)
    np.savez(dest, meta=np.array(json.dumps(meta)), **arrays)
    return dest


@pytest.mark.parametrize("edit,why", [
    (lambda m: m.update(names=None), r"meta\.names must be a list, got None"),
    (lambda m: m.pop("names"), r"meta\.names must be a list, got '\(missing\)'"),
    (lambda m: m.update(names="abc"), r"meta\.names must be a list, got 'abc'"),
    (lambda m: m.update(names=[1]), r"meta\.names\[0\] must be a str, got 1"),
    (lambda m: m.update(maps={}), r"meta\.maps must be a list, got \{\}"),
    (lambda m: m["maps"][1].pop("kind"), r"meta\.maps\[1\]\.kind must be a str, got '\(missing\)'"),
    (lambda m: m["maps"][0].update(call=-1), r"meta\.maps\[0\]\.call must be an int >= 0, got -1"),
    (lambda m: m["maps"][0].update(dtype="Tensor"), r"meta\.maps\[0\]\.dtype must be a torch dtype name"),
    (lambda m: m["maps"][0].update(shape=[1, 2]), r"maps\[0\]\.shape is \[1, 2\], its array 'map_0' has shape"),
    (lambda m: m["maps"].append(dict(m["maps"][0])), r"maps\[3\] has no array 'map_3'"),
    (lambda m: m.update(version=2), r"meta\.format and meta\.version must be"),
])
def test_load_validates_the_metadata(tmp_path, edit, why):
    q, k, v = _qkv()
    with AttentionRecorder(Net()) as rec:
        rec.model(q, k, v)
    good = rec.save(tmp_path / "good.npz")
    bad = _rewrite_meta(good, tmp_path / "bad.npz", edit)
    with pytest.raises(ValueError, match=r"^path must be an attention recording written by AttentionRecorder\.save "
                                         rf"\(attnzoo\.attention_maps version 1\), got '{tmp_path / 'bad.npz'}': {why}"):
        AttentionRecorder.load(bad)
