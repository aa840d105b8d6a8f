"""NonLocal and GlobalContext (attnzoo.gates.context) against their papers' formulas.

The references re-write each formula in float64 with explicit sums, using the module's own
weights: a 1x1 conv is an einsum, max pooling a maximum over 2-blocks, the pairwise map a
dense (N, M) matrix (softmax written as exp / sum), BatchNorm and LayerNorm by their
definitions.
"""

from __future__ import annotations

import copy
import shutil
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import attnzoo as az
from attnzoo.gates.context import NONLOCAL_MODES, GlobalContext, NonLocal

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
FAST = settings(max_examples=15, deadline=None)
needs_cc = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                              reason="torch.compile on CPU needs a C compiler")


def rand(*shape: int, seed: int = 1, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def randomise(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (also the zero-initialised last layers), so nothing is trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return m


# ----------------------------------------------------------------------------- references
def conv1x1(conv: torch.nn.Module, x: Tensor) -> Tensor:
    w, b = conv.weight.flatten(1), conv.bias  # (O, I)
    return torch.einsum("oi,bi...->bo...", w, x) + b.view(1, -1, *(1,) * (x.dim() - 2))


def pool2(x: Tensor, dims: int) -> Tensor:
    """Max over non-overlapping 2-blocks of each pooled spatial dim (not time, for dims=3)."""
    for d in range(x.dim() - min(dims, 2), x.dim()):
        x = x.unfold(d, 2, 2).amax(-1)
    return x


def batchnorm_train(bn: torch.nn.Module, z: Tensor) -> Tensor:
    axes = [0, *range(2, z.dim())]
    mean = z.mean(axes, keepdim=True)
    var = ((z - mean) ** 2).mean(axes, keepdim=True)  # biased, as in training
    shape = (1, -1, *(1,) * (z.dim() - 2))
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def nonlocal_map(m: NonLocal, x: Tensor) -> tuple[Tensor, Tensor]:
    """f / C(x) as a dense (B, N, M) matrix, and g (B, M, inter), from the paper's eq. 2-5."""
    sub = (lambda t: pool2(t, m.dims)) if m.sub_sample else (lambda t: t)
    theta = x if m.theta is None else conv1x1(m.theta, x)
    phi = sub(x if m.phi is None else conv1x1(m.phi, x))
    g = sub(conv1x1(m.g, x)).flatten(2).transpose(1, 2)  # (B, M, inter)
    th, ph = theta.flatten(2).transpose(1, 2), phi.flatten(2).transpose(1, 2)  # (B, N, d), (B, M, d)
    n_keys = ph.shape[1]
    if m.mode == "concatenation":
        pairs = torch.cat(
            [th.unsqueeze(2).expand(-1, -1, n_keys, -1), ph.unsqueeze(1).expand(-1, th.shape[1], -1, -1)], dim=-1
        )  # (B, N, M, 2d): [theta_i, phi_j]
        return torch.relu(pairs @ m.concat_project.weight[0]) / n_keys, g
    scores = torch.einsum("bnd,bmd->bnm", th, ph) * (th.shape[-1] ** -0.5 if m.use_scale else 1.0)
    if m.mode == "dot_product":
        return scores / n_keys, g
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True), g


def nonlocal_reference(m: NonLocal, x: Tensor) -> Tensor:
    f, g = nonlocal_map(m, x)
    y = (f @ g).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])  # (B, inter, *spatial)
    z = conv1x1(m.W, y)
    return x + (batchnorm_train(m.bn, z) if m.bn is not None else z)


def gc_reference(m: GlobalContext, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(output, context weights, channel term) from GCNet eq. 2 / fig. 4(d), written out."""
    xf = x.flatten(2)  # (B, C, N)
    logits = torch.einsum("c,bcn->bn", m.conv_mask.weight.flatten(), xf) + m.conv_mask.bias
    e = torch.exp(logits - logits.amax(-1, keepdim=True))
    w = e / e.sum(-1, keepdim=True)  # (B, N)
    context = torch.einsum("bcn,bn->bc", xf, w)
    h = context @ m.fc1.weight.T + m.fc1.bias
    mu, var = h.mean(-1, keepdim=True), ((h - h.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)
    h = torch.relu((h - mu) / torch.sqrt(var + m.norm.eps) * m.norm.weight + m.norm.bias)
    t = (h @ m.fc2.weight.T + m.fc2.bias).view(*context.shape, *(1,) * (x.dim() - 2))
    out = x + t if m.fusion == "add" else x * (m.mul_scale * torch.sigmoid(t))
    return out, w.view(x.shape[0], 1, *x.shape[2:]), t


# ----------------------------------------------------------------------------- non-local
@pytest.mark.parametrize("mode", NONLOCAL_MODES)
@pytest.mark.parametrize("dims, size, sub_sample", [(1, (9,), False), (2, (4, 6), True), (2, (5, 3), False), (3, (3, 4, 4), True)])
def test_nonlocal_matches_the_paper_formula(mode, dims, size, sub_sample):
    m = randomise(NonLocal(6, mode=mode, sub_sample=sub_sample, use_scale=mode == "dot_product", dims=dims, dtype=F64))
    x = rand(3, 6, *size)
    torch.testing.assert_close(m(x), nonlocal_reference(m, x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m.gate(x), nonlocal_map(m, x)[0], atol=1e-10, rtol=1e-10)


def test_nonlocal_inter_channels_pooling_and_unbatched():
    m = randomise(NonLocal(8, sub_sample=True, dtype=F64)).eval()
    assert (m.inter_channels, m.theta.out_channels, m.W.in_channels) == (4, 4, 4)
    assert NonLocal(64, 4).inter_channels == 16 and NonLocal(1).inter_channels == 1
    x = rand(8, 6, 6)
    assert m.gate(x).shape == (36, 9)  # 6 x 6 queries, keys pooled to 3 x 3
    torch.testing.assert_close(m(x), m(x[None])[0])
    assert NonLocal(4, dims=3, sub_sample=True).pool.kernel_size == (1, 2, 2)  # time is not pooled


@pytest.mark.parametrize("norm", [True, False])
def test_nonlocal_starts_as_identity_and_init_identity_restores_it(norm):
    m = NonLocal(6, norm=norm, dtype=F64)
    x = rand(2, 6, 4, 5)
    assert torch.equal(m(x), x)
    randomise(m)
    assert not torch.allclose(m(x), x)
    m.init_identity()
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
def test_nonlocal_gradcheck(mode):
    m = randomise(NonLocal(4, mode=mode, sub_sample=mode == "gaussian", dtype=F64))
    x = rand(2, 4, 4, 4).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,))


@FAST
@given(mode=st.sampled_from(NONLOCAL_MODES), dims=st.integers(1, 3), b=st.integers(1, 3), n=st.integers(2, 4),
       seed=st.integers(0, 2**16))
def test_nonlocal_is_equivariant_to_permuting_positions(mode, dims, b, n, seed):
    """Without sub-sampling every op is per position or a sum over positions (BN included)."""
    m = randomise(NonLocal(4, mode=mode, dims=dims, dtype=F64), seed)
    x = rand(b, 4, *(n,) * dims, seed=seed)
    perm = torch.randperm(n**dims, generator=torch.Generator().manual_seed(seed))
    permute = lambda t: t.flatten(2)[..., perm].view_as(t)  # noqa: E731
    out = m(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(m(permute(x)), permute(out), atol=1e-10, rtol=1e-10)
    gate = m.gate(x)
    torch.testing.assert_close(m.gate(permute(x)), gate[:, perm][:, :, perm], atol=1e-10, rtol=1e-10)


class LiveStorage(TorchDispatchMode):
    """Peak bytes of tensors of at least `floor` bytes alive at once (storages counted once)."""

    def __init__(self, floor: int) -> None:
        super().__init__()
        self.floor, self.live, self.peak = floor, {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.untyped_storage().nbytes() >= self.floor:
                self.live[t.untyped_storage().data_ptr()] = (StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


@pytest.mark.parametrize("mode, forward_matrices, step_matrices", [
    ("embedded_gaussian", 0, 0), ("gaussian", 0, 0), ("dot_product", 0, 0), ("concatenation", 1, 3)])
def test_nonlocal_holds_at_most_one_score_matrix_per_sample(mode, forward_matrices, step_matrices):
    """B = 4 maps of 28 x 28 (N = 784): the forward with autograd holds at most one (N, N)
    matrix per sample (none for the Gaussian kinds and the dot product). In the backward the
    concatenation form also needs the gradients of its scores (two more)."""
    b, n = 4, 28 * 28
    torch.manual_seed(0)
    m = NonLocal(16, mode=mode)
    x = torch.randn(b, 16, 28, 28, requires_grad=True)
    one = n * n * 4  # one float32 (N, N) matrix
    with LiveStorage(one) as fwd:
        out = m(x)
    assert fwd.peak <= forward_matrices * b * one
    with LiveStorage(one) as step:
        m(x).sum().backward()
    assert step.peak <= step_matrices * b * one
    del out


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
@pytest.mark.parametrize("sub_sample", [False, True])
def test_recorder_records_the_nonlocal_map_with_and_without_autograd(mode, sub_sample):
    """The recorder records NonLocal's map f / C(x) (B, N, M), `gate(x)`, once per forward, the
    same with autograd (training, an input that requires grad) and under `torch.no_grad()`:
    the fused forward never forms the map, and its SDPA call is not recorded a second time."""
    m = randomise(NonLocal(6, mode=mode, sub_sample=sub_sample), 3)  # float32, training
    x = rand(2, 6, 4, 6, dtype=torch.float32)
    want = nonlocal_map(copy.deepcopy(m).double(), x.double())[0]  # (B, N, M), float64
    recorded = []
    for grad in (False, True):
        xi = x.clone().requires_grad_(grad)
        with az.AttentionRecorder(m) as rec, torch.set_grad_enabled(grad):
            out = m(xi)
        assert out.requires_grad == grad
        assert [(r.name, r.kind, r.module, r.call) for r in rec.maps] == [("", "gate", "NonLocal", 0)]
        recorded.append(rec.maps[0].tensor)
    assert torch.equal(recorded[0], recorded[1])
    assert recorded[0].shape == (2, 24, 6 if sub_sample else 24) and recorded[0].dtype == torch.float32
    torch.testing.assert_close(recorded[0].double(), want, atol=1e-6, rtol=1e-5)


def test_nonlocal_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"mode must be one of \('embedded_gaussian', 'gaussian', 'dot_product', 'concatenation'\), got 'softmax'"):
        NonLocal(8, mode="softmax")
    with pytest.raises(ValueError, match=r"x must have 8 channels \(dim 1\) for this NonLocal, got 6 \(shape \(2, 6, 4, 4\)\)"):
        NonLocal(8)(torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match=r"x must be 4-D \(B, C, H, W\) or 3-D unbatched"):
        NonLocal(8)(torch.randn(2, 8, 4, 4, 4))
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but NonLocal parameters are torch.float32"):
        NonLocal(8)(rand(2, 8, 4, 4))
    with pytest.raises(ValueError, match="reduction must be a positive int, got 0"):
        NonLocal(8, 0)
    with pytest.raises(ValueError, match=r"x must have spatial sizes of at least 1 for NonLocal, got shape \(2, 8, 0, 4\)"):
        NonLocal(8)(torch.randn(2, 8, 0, 4))
    with pytest.raises(ValueError, match=r"x must have at least 2 positions along each pooled dim \(H, W\) for "
                                         r"NonLocal\(sub_sample=True\), got shape \(2, 8, 1, 3, 1\)"):
        NonLocal(8, sub_sample=True, dims=3)(torch.randn(2, 8, 1, 3, 1))
    assert NonLocal(8, sub_sample=True, dims=3)(torch.randn(2, 8, 1, 2, 2)).shape == (2, 8, 1, 2, 2)  # T = 1 is fine


# ----------------------------------------------------------------------------- global context
@pytest.mark.parametrize("fusion", ["add", "mul"])
@pytest.mark.parametrize("dims, size", [(1, (7,)), (2, (4, 5)), (3, (2, 3, 3))])
def test_gc_matches_the_paper_formula(fusion, dims, size):
    m = randomise(GlobalContext(32, 8, fusion=fusion, dims=dims, dtype=F64))
    x = rand(3, 32, *size)
    out, w, t = gc_reference(m, x)
    torch.testing.assert_close(m(x), out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m.gate(x), w, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m.channel_term(x), t, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m(x[0]), out[0], atol=1e-10, rtol=1e-10)  # unbatched


def test_gc_defaults_follow_the_official_block():
    m = GlobalContext(64, dtype=F64)
    assert (m.hidden_channels, m.fc1.out_features, m.norm.normalized_shape) == (4, 4, (4,))
    x = rand(2, 64, 5, 5)
    assert torch.equal(m(x), x)  # last layer zero: the "add" block starts as the identity
    assert torch.equal(m.conv_mask.bias, torch.zeros(1, dtype=F64))


@pytest.mark.parametrize("fusion", ["add", "mul"])
def test_gc_init_identity(fusion):
    m = randomise(GlobalContext(16, 4, fusion=fusion, dtype=F64))
    x = rand(2, 16, 3, 3)
    assert not torch.allclose(m(x), x)
    m.init_identity()
    assert torch.equal(m(x), x)
    torch.nn.init.normal_(m.fc2.weight)  # and it still learns: the term moves away from 0
    assert not torch.allclose(m(x), x)


def test_gc_parameters_on_resnet50_match_the_paper():
    """GCNet adds about 2.5M parameters (r = 16) to ResNet-50 with a block in every residual
    block of c3-c5 (the paper's default placement). Widths come from the ResNet-50 built by
    `transformers` (25.56M parameters with the 1000-class head, the published count)."""
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        net = transformers.ResNetForImageClassification(transformers.ResNetConfig(num_labels=1000))
    assert round(sum(p.numel() for p in net.parameters()) / 1e4) == 2556
    widths = [layer.layer[-1].convolution.out_channels for stage in net.resnet.encoder.stages[1:] for layer in stage.layers]
    assert widths == [512] * 4 + [1024] * 6 + [2048] * 3
    added = sum(p.numel() for c in widths for p in GlobalContext(c, 16, device="meta").parameters())
    assert round(added / 1e5) == 25


@FAST
@given(dims=st.integers(1, 3), b=st.integers(1, 3), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_gc_context_is_invariant_to_permuting_positions(dims, b, n, seed):
    m = randomise(GlobalContext(8, 2, dims=dims, dtype=F64), seed)
    x = rand(b, 8, *(n,) * dims, seed=seed)
    perm = torch.randperm(n**dims, generator=torch.Generator().manual_seed(seed))
    permute = lambda t: t.flatten(2)[..., perm].view_as(t)  # noqa: E731
    out = m(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(m.channel_term(permute(x)), m.channel_term(x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m.gate(x).flatten(2).sum(-1), torch.ones(b, 1, dtype=F64))


@pytest.mark.parametrize("fusion", ["add", "mul"])
def test_gc_gradcheck(fusion):
    m = randomise(GlobalContext(8, 2, fusion=fusion, dtype=F64))
    x = rand(2, 8, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,))


def test_gc_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"fusion must be 'add' or 'mul', got 'cat'"):
        GlobalContext(8, fusion="cat")
    with pytest.raises(ValueError, match=r"x must have 8 channels \(dim 1\) for this GlobalContext, got 4"):
        GlobalContext(8)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"dims must be 1, 2 or 3 \(spatial dimensions\), got 4"):
        GlobalContext(8, dims=4)
    with pytest.raises(ValueError, match=r"x must have spatial sizes of at least 1 for GlobalContext, got shape \(8, 3, 0\)"):
        GlobalContext(8)(torch.randn(8, 3, 0))


# ----------------------------------------------------------------------------- both: factory, compile, export, autocast
def test_factory_keys_build_the_context_blocks():
    assert type(az.create_attention("gc", 32, reduction=4)) is GlobalContext
    nl = az.create_attention("nonlocal", 32, mode="dot_product", dims=1)
    assert type(nl) is NonLocal and nl.mode == "dot_product" and nl.dims == 1
    assert GlobalContext.retrofit_error is None and NonLocal.retrofit_error is None


BUILD = {
    "nonlocal-embedded": lambda: NonLocal(16),
    "nonlocal-concat-sub": lambda: NonLocal(16, mode="concatenation", sub_sample=True),
    "gc-mul": lambda: GlobalContext(16, 4, fusion="mul"),
}


@needs_cc
@pytest.mark.parametrize("name", list(BUILD))
def test_compile_matches_eager(name):
    m = randomise(BUILD[name]().float(), 5).eval()
    x = rand(2, 16, 6, 6, dtype=torch.float32)
    compiled = torch.compile(m, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(BUILD))
def test_export_matches_eager(name):
    m = randomise(BUILD[name]().float(), 5).eval()
    x = rand(2, 16, 6, 6, dtype=torch.float32)
    exported = torch.export.export(m, (x,))
    torch.testing.assert_close(exported.module()(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(BUILD))
def test_cpu_autocast_bfloat16(name):
    m = randomise(BUILD[name]().float(), 5).eval()
    x = rand(2, 16, 6, 6, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), m(x), atol=0.15, rtol=0.05)
