"""The gates of issue 17 as modules: float64 gradcheck, hypothesis properties (shape,
finite output, channel-permutation equivariance where the mechanism has it), torch.compile
(fullgraph) and torch.export, bfloat16 under CPU autocast, and add_attention with
init="identity" (bit-exact at insertion, gates learn) or its refusal."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attnzoo as az

pytestmark = pytest.mark.usefixtures("single_thread")
D = torch.float64

# (factory key, kwargs, supported dims)
GATES = [
    ("eca", {}, (1, 2, 3)),
    ("ese", {}, (1, 2, 3)),
    ("srm", {}, (1, 2, 3)),
    ("ge", {}, (1, 2, 3)),
    ("ge", {"extent": 2}, (1, 2, 3)),
    ("ge", {"extent": 2, "params": True}, (1, 2, 3)),
    ("coord", {"reduction": 2}, (2,)),
    ("bam", {"reduction": 2}, (1, 2, 3)),
    ("bam", {"reduction": 2, "combine": "product"}, (2,)),
    ("triplet", {"kernel_size": 3}, (2,)),
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}" for k, kw, _ in GATES]


def make(kind: str, kw: dict, channels: int = 8, dims: int = 2, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    m = az.create_attention(kind, channels, dims=dims, **kw).to(dtype).eval()
    with torch.no_grad():  # away from the defaults (SRM's cfc = 0, BN's identity statistics)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_(0, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def fmap(dims: int, b: int = 2, c: int = 8, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, *[6, 5, 4][:dims], generator=g, dtype=dtype)


@pytest.mark.parametrize(("kind", "kw", "dims_ok"), GATES, ids=IDS)
def test_gradcheck_float64(kind: str, kw: dict, dims_ok: tuple) -> None:
    for dims in dims_ok:
        m = make(kind, kw, channels=4, dims=dims, dtype=D)
        x = fmap(dims, c=4, dtype=D).requires_grad_()
        assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)
    m.train()  # batch statistics (the BatchNorms of SRM, GE-theta, coord, BAM, triplet) in the gradient too
    assert torch.autograd.gradcheck(m, (fmap(dims_ok[-1], b=3, c=4, dtype=D).requires_grad_(),), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(("kind", "kw", "dims_ok"), GATES, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 12), size=st.lists(st.integers(1, 9), min_size=3, max_size=3),
       dims=st.sampled_from([1, 2, 3]), batched=st.booleans(), seed=st.integers(0, 2**16))
def test_shape_and_finite(kind: str, kw: dict, dims_ok: tuple, b: int, c: int, size: list, dims: int,
                          batched: bool, seed: int) -> None:
    if dims not in dims_ok:
        dims = dims_ok[0]
    m = make(kind, kw, channels=c, dims=dims, seed=seed)
    x = torch.randn(b, c, *size[:dims], generator=torch.Generator().manual_seed(seed)) * 10
    if not batched:
        x = x[0]
    y, g = m(x), m.gate(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(g).all()
    assert torch.broadcast_shapes(g.shape, x.shape) == x.shape
    low, high = (1.0, 2.0) if kind == "bam" else (0.0, 1.0)
    assert bool(((g >= low) & (g <= high)).all())
    if batched and b > 1:  # in eval mode, each sample's result is its own
        torch.testing.assert_close(m(x[1:2]), y[1:2], rtol=1e-5, atol=1e-6)


def permute_channels(m: nn.Module, perm: torch.Tensor) -> nn.Module:
    """The same gate with its channels renumbered: every tensor indexed by channel is permuted."""
    m = copy.deepcopy(m)
    with torch.no_grad():
        if isinstance(m, az.EffectiveSE):
            m.fc.weight.copy_(m.fc.weight[perm][:, perm])
            m.fc.bias.copy_(m.fc.bias[perm])
        elif isinstance(m, az.SRM):
            m.cfc.copy_(m.cfc[perm])
            for t in (m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var):
                t.copy_(t[perm])
        elif isinstance(m, az.GatherExcite) and m.gather is not None:
            for layer in m.gather:
                for t in (*layer.parameters(), *layer.buffers()):
                    if t.dim() > 0 and t.shape[0] == m.channels:
                        t.copy_(t[perm])
        elif isinstance(m, az.CoordAttention):
            m.conv1.weight.copy_(m.conv1.weight[:, perm])
            for conv in (m.conv_h, m.conv_w):
                conv.weight.copy_(conv.weight[perm])
                conv.bias.copy_(conv.bias[perm])
        elif isinstance(m, az.BAM):
            m.fc1.weight.copy_(m.fc1.weight[:, perm])
            m.fc2.weight.copy_(m.fc2.weight[perm])
            m.fc2.bias.copy_(m.fc2.bias[perm])
            m.spatial[0].weight.copy_(m.spatial[0].weight[:, perm])
    return m


EQUIVARIANT = [g for g in GATES if g[0] not in ("eca", "triplet")]


@pytest.mark.parametrize(("kind", "kw", "dims_ok"), EQUIVARIANT, ids=[i for i, g in zip(IDS, GATES) if g in EQUIVARIANT])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), c=st.integers(2, 10))
def test_channel_permutation_equivariance(kind: str, kw: dict, dims_ok: tuple, seed: int, c: int) -> None:
    """Renumbering the channels of the input and of the gate's weights renumbers the output."""
    dims = dims_ok[-1]
    m = make(kind, kw, channels=c, dims=dims, seed=seed, dtype=D)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    x = fmap(dims, c=c, dtype=D, seed=seed)
    torch.testing.assert_close(permute_channels(m, perm)(x[:, perm]), m(x)[:, perm], rtol=1e-12, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), c=st.integers(2, 20), dims=st.sampled_from([1, 2, 3]))
def test_eca_reversal_equivariance(seed: int, c: int, dims: int) -> None:
    """ECA is not permutation-equivariant (its conv mixes neighbouring channels), but reversing
    the channel order with a reversed kernel reverses the output."""
    m = make("eca", {}, channels=c, dims=dims, seed=seed, dtype=D)
    flipped = copy.deepcopy(m)
    with torch.no_grad():
        flipped.conv.weight.copy_(m.conv.weight.flip(-1))
    x = fmap(dims, c=c, dtype=D, seed=seed)
    torch.testing.assert_close(flipped(x.flip(1)), m(x).flip(1), rtol=1e-12, atol=1e-12)


def test_triplet_is_not_channel_equivariant_but_its_spatial_branch_is() -> None:
    m = make("triplet", {"kernel_size": 3}, channels=6, dtype=D)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    x = fmap(2, c=6, dtype=D)
    assert not torch.allclose(m(x[:, perm]), m(x)[:, perm])  # the (C, W) and (H, C) convs see channel order
    spatial = m.gate_act(m.hw.bn(m.hw.conv(torch.stack((x.max(1).values, x.mean(1)), 1))))
    spatial_p = m.gate_act(m.hw.bn(m.hw.conv(torch.stack((x[:, perm].max(1).values, x[:, perm].mean(1)), 1))))
    torch.testing.assert_close(spatial_p, spatial, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kind", "kw", "dims_ok"), GATES, ids=IDS)
def test_compile_fullgraph_export_and_fx_without_warnings(kind: str, kw: dict, dims_ok: tuple) -> None:
    for dims in dims_ok:
        m = make(kind, kw, dims=dims)
        x = fmap(dims)
        want = m(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # attnzoo raises no warnings, traced or exported
            torch._dynamo.reset()  # one forward code object serves every gate: start each from a clean cache
            compiled = torch.compile(m, fullgraph=True, dynamic=False, backend="eager")
            torch.testing.assert_close(compiled(x), want, rtol=0, atol=0)
            batch = torch.export.Dim("batch", min=1, max=64)
            ep = torch.export.export(m, (x,), dynamic_shapes={"x": {0: batch}})
            torch.testing.assert_close(ep.module()(x), want, rtol=1e-6, atol=1e-6)
            x3 = fmap(dims, b=3, seed=5)  # another batch size, same program
            torch.testing.assert_close(ep.module()(x3), m(x3), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(torch.fx.symbolic_trace(m)(x), want, rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "kw", "dims_ok"), GATES, ids=IDS)
def test_bfloat16_under_cpu_autocast(kind: str, kw: dict, dims_ok: tuple) -> None:
    m = make(kind, kw, dims=dims_ok[-1])
    x = fmap(dims_ok[-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), m(x), rtol=0.05, atol=0.05)
    xb, mb = x.bfloat16(), copy.deepcopy(m).bfloat16()  # and a bfloat16 module on bfloat16 input
    assert mb(xb).dtype == torch.bfloat16
    torch.testing.assert_close(mb(xb).float(), m(x), rtol=0.05, atol=0.05)


# ---------------------------------------------------------------- add_attention


transformers = pytest.importorskip("transformers")

RETROFIT = [("eca", {}), ("ese", {}), ("srm", {}), ("ge", {"extent": 2, "params": True}),
            ("coord", {"reduction": 2}), ("bam", {"reduction": 2}), ("bam", {"reduction": 2, "combine": "product"}),
            ("triplet", {"kernel_size": 3})]


def hf_resnet() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2],
                                    layer_type="bottleneck", num_labels=3)
    return transformers.ResNetForImageClassification(cfg).eval()


@pytest.mark.parametrize(("kind", "kw"), RETROFIT, ids=[f"{k}-{kw}" for k, kw in RETROFIT])
def test_add_attention_identity_start_is_bit_equal_and_gates_learn(kind: str, kw: dict) -> None:
    model = hf_resnet()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x).logits
    az.add_attention(model, kind, init="identity", **kw)
    gates = az.find_attention(model)
    assert len(gates) == 3 and all(type(g) is type(az.create_attention(kind, 8, **kw)) for _, g in gates)
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)  # eval mode: exact identity
    model.train()
    model(x).logits.square().sum().backward()
    for _, g in gates:  # the gates learn from the first step
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters()), kind


def test_add_attention_identity_start_in_training_mode_too() -> None:
    """In training mode the gates' BatchNorms use batch statistics: the gate is still exactly 1."""
    for kind, kw in RETROFIT:
        model = hf_resnet().train()
        x = torch.randn(4, 3, 32, 32)
        ref = copy.deepcopy(model)
        az.add_attention(model, kind, init="identity", **kw)
        with torch.no_grad():
            assert torch.equal(model(x).logits, ref(x).logits), kind


def test_add_attention_identity_refused_for_parameter_free_ge() -> None:
    model = hf_resnet()
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=r"^add_attention\('ge', init='identity'\): GatherExcite\(params=False\) "
                                         r"\(GE-theta-minus\) has no parameters: .* use params=True or init='default'$"):
        az.add_attention(model, "ge", init="identity", extent=2)
    assert set(model.state_dict()) == keys and not az.find_attention(model)  # nothing was changed
    az.add_attention(model, "ge", extent=2)  # the default start is fine
    assert len(az.find_attention(model)) == 3


@pytest.mark.parametrize("kind", ["eca", "ese", "srm", "ge", "coord", "bam", "triplet"])
def test_create_attention_keys(kind: str) -> None:
    cls = {"eca": az.ECA, "ese": az.EffectiveSE, "srm": az.SRM, "ge": az.GatherExcite,
           "coord": az.CoordAttention, "bam": az.BAM, "triplet": az.TripletAttention}[kind]
    m = az.create_attention(kind.upper(), 16)
    assert type(m) is cls and m.channels == 16


@pytest.mark.parametrize(("kind", "kw", "dims_ok"), GATES, ids=IDS)
@pytest.mark.parametrize("shape", [(0, 8, 5, 4), (2, 8, 0, 4), (2, 8, 0, 0)])
@pytest.mark.parametrize("train", [False, True])
def test_empty_batch_or_map(kind: str, kw: dict, dims_ok: tuple, shape: tuple, train: bool) -> None:
    """An empty batch or map gives the empty result, a finite gate and finite (zero) gradients."""
    m = make(kind, kw).train(train)
    x = torch.randn(*shape, requires_grad=True)
    y, g = m(x), m.gate(x)
    assert y.shape == x.shape and torch.isfinite(g).all()
    assert torch.broadcast_shapes(g.shape, x.shape) == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


IDENTITY = [g for g in GATES if g[0] != "ge" or g[1].get("params")]  # GE-theta-minus cannot start as identity


@pytest.mark.parametrize(("kind", "kw", "dims_ok"), IDENTITY, ids=[i for i, g in zip(IDS, GATES) if g in IDENTITY])
@pytest.mark.parametrize("train", [False, True])
def test_init_identity_gate_is_exactly_one(kind: str, kw: dict, dims_ok: tuple, train: bool) -> None:
    for dims in dims_ok:
        m = make(kind, kw, dims=dims).train(train)
        m.init_identity()
        x = fmap(dims, b=3) * 5
        assert torch.equal(m.gate(x), torch.ones_like(m.gate(x))) and torch.equal(m(x), x)


def test_official_state_dict_names_and_shapes_load() -> None:
    """ECA, SRM and coordinate attention keep the authors' parameter names and shapes."""
    eca = az.ECA(64, 3)
    eca.load_state_dict({"conv.weight": torch.randn(1, 1, 3)})
    srm = az.SRM(16)  # official: cfc (C, 2) and a BatchNorm2d(C), same names and shapes as BatchNorm1d
    srm.load_state_dict({**{f"bn.{k}": v for k, v in nn.BatchNorm2d(16).state_dict().items()}, "cfc": torch.randn(16, 2)})
    coord = az.CoordAttention(64)  # official: conv1 (mip, C, 1, 1), bn1, conv_h / conv_w (C, mip, 1, 1), mip = 8
    official = {"conv1.weight": torch.randn(8, 64, 1, 1), "conv1.bias": torch.randn(8),
                "conv_h.weight": torch.randn(64, 8, 1, 1), "conv_h.bias": torch.randn(64),
                "conv_w.weight": torch.randn(64, 8, 1, 1), "conv_w.bias": torch.randn(64),
                **{f"bn1.{k}": v for k, v in nn.BatchNorm2d(8).state_dict().items()}}
    coord.load_state_dict(official)
    assert torch.equal(coord.conv_h.weight, official["conv_h.weight"])
