"""SelectiveKernel and SplitAttention (attnzoo.gates.kernel) against their papers' formulas.

The references use torch's convolution for the branch convs (the oracle for a conv) and
write everything after it in float64 by hand: BatchNorm by its definition, the fully
connected layers as matrix products (the grouped ones group by group), the softmax across
branches as exp / sum, the channel order of ResNeSt's grouped logits with explicit indices.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import attnzoo as az
from attnzoo.gates.kernel import SelectiveKernel, SplitAttention

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
needs_cc = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                              reason="torch.compile on CPU needs a C compiler")


def rand(*shape: int, seed: int = 1, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def randomise(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return m


def bn_train(bn: nn.Module, z: Tensor) -> Tensor:
    axes = [0, *range(2, z.dim())]
    mean = z.mean(axes, keepdim=True)
    var = ((z - mean) ** 2).mean(axes, keepdim=True)
    shape = (1, -1, *(1,) * (z.dim() - 2))
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def softmax0(z: Tensor, dim: int) -> Tensor:
    e = torch.exp(z - z.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def sk_reference(m: SelectiveKernel, x: Tensor) -> tuple[Tensor, Tensor]:
    """SKNet eq. 1-6: split (dilated grouped convs), fuse (sum, pool, fc-BN-ReLU), select."""
    d = x.dim() - 2
    u = []
    for i, (conv, bn, _) in enumerate(m.convs):
        y = CONV[d](x, conv.weight, stride=m.stride, padding=i + 1, dilation=i + 1, groups=m.groups)
        u.append(torch.relu(bn_train(bn, y)))
    s = sum(u).flatten(2).mean(-1)  # (B, C)
    z = torch.relu(bn_train(m.bn, s @ m.fc1.weight.T))  # (B, d)
    a = softmax0((z @ m.fc2.weight.T).view(x.shape[0], m.branches, -1), dim=1)  # (B, M, C)
    out = sum(a[:, i].view(*a[:, i].shape, *(1,) * d) * u[i] for i in range(m.branches))
    return out, a


def splat_reference(m: SplitAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """ResNeSt's split attention, group by group and split by split."""
    d, r, k, c = x.dim() - 2, m.radix, m.groups, m.out_channels
    conv = m.conv
    y = torch.relu(bn_train(m.bn0, CONV[d](x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)))
    splits = [y[:, i * c : (i + 1) * c] for i in range(r)]
    s = sum(splits).flatten(2).mean(-1)  # (B, C)
    cg, hg = c // k, m.hidden_channels // k  # per cardinal group
    w1, w2 = m.fc1.weight[..., 0], m.fc2.weight[..., 0]  # (hidden, C / K), (R C, hidden / K)
    h = torch.cat([s[:, g * cg : (g + 1) * cg] @ w1[g * hg : (g + 1) * hg].T for g in range(k)], 1) + m.fc1.bias
    h = torch.relu(bn_train(m.bn1, h))
    rows = r * cg  # logits per cardinal group
    logits = torch.cat([h[:, g * hg : (g + 1) * hg] @ w2[g * rows : (g + 1) * rows].T for g in range(k)], 1) + m.fc2.bias
    att = torch.empty(x.shape[0], r, c, dtype=x.dtype)
    for ch in range(c):
        g, j = divmod(ch, cg)
        per_radix = logits[:, [g * rows + i * cg + j for i in range(r)]]  # (B, R)
        att[:, :, ch] = softmax0(per_radix, 1) if r > 1 else torch.sigmoid(per_radix)
    out = sum(att[:, i].view(x.shape[0], c, *(1,) * d) * splits[i] for i in range(r))
    return out, att


@pytest.mark.parametrize("dims, size", [(1, (11,)), (2, (7, 6)), (3, (3, 5, 4))])
@pytest.mark.parametrize("branches, stride", [(2, 1), (3, 2)])
def test_sk_matches_the_paper_formula(dims, size, branches, stride):
    m = randomise(SelectiveKernel(8, 4, out_channels=12, branches=branches, groups=4, min_hidden=3,
                                  stride=stride, dims=dims, dtype=F64))
    x = rand(3, 8, *size)
    out, a = sk_reference(m, x)
    torch.testing.assert_close(m(x), out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m.gate(x), a.view(*a.shape, *(1,) * dims), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("radix, groups, dims", [(2, 1, 2), (2, 2, 2), (4, 2, 1), (1, 2, 2), (2, 2, 3)])
def test_splat_matches_the_resnest_formula(radix, groups, dims):
    m = randomise(SplitAttention(8, 2, out_channels=12, radix=radix, groups=groups, min_hidden=4, dims=dims, dtype=F64))
    x = rand(3, 8, *(5,) * dims)
    out, att = splat_reference(m, x)
    torch.testing.assert_close(m(x), out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m.gate(x), att.view(*att.shape, *(1,) * dims), atol=1e-10, rtol=1e-10)


def test_defaults_follow_the_papers():
    sk = SelectiveKernel(64)
    assert (sk.branches, sk.groups, sk.hidden_channels) == (2, 32, 32)  # d = max(64 / 16, L = 32)
    assert SelectiveKernel(1024).hidden_channels == 64
    assert [c[0].dilation for c in sk.convs] == [(1, 1), (2, 2)]  # 3x3, and 5x5 as a dilated 3x3
    sp = SplitAttention(64)
    assert (sp.radix, sp.groups, sp.hidden_channels, sp.conv.groups) == (2, 1, 32, 2)
    assert SplitAttention(256).hidden_channels == 128  # 256 * 2 // 4


def _net_params(unit) -> int:
    """Parameters of a ResNeXt-50 (32x4d) layout whose 3x3 conv units are `unit(width)`."""
    mods, cin = [nn.Conv2d(3, 64, 7, bias=False), nn.BatchNorm2d(64), nn.Linear(2048, 1000)], 64
    for mid, cout, depth in zip([128, 256, 512, 1024], [256, 512, 1024, 2048], [3, 4, 6, 3]):
        for i in range(depth):
            mods += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), unit(mid),
                     nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            if i == 0:  # projection shortcut
                mods += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            cin = cout
    return sum(p.numel() for m in mods for p in m.parameters())


def test_sknet50_has_the_papers_parameter_count():
    """SKNet paper, table 2: ResNeXt-50 25.0M parameters, SKNet-50 27.5M."""
    with torch.device("meta"):
        resnext = _net_params(lambda c: nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(c)))
        sknet = _net_params(lambda c: SelectiveKernel(c, 16, groups=32, min_hidden=32))
    assert (round(resnext / 1e5), round(sknet / 1e5)) == (250, 275)


@pytest.mark.parametrize("build", [lambda: SelectiveKernel(4, 2, groups=2, min_hidden=2, dtype=F64),
                                   lambda: SplitAttention(4, 2, groups=2, min_hidden=2, dtype=F64)])
def test_gradcheck(build):
    m = randomise(build())
    x = rand(3, 4, 4, 4).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,))


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(["sk", "splat"]), dims=st.integers(1, 3), b=st.integers(2, 3), n=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_shapes_weights_sum_to_one_and_finite(kind, dims, b, n, seed):
    torch.manual_seed(seed)
    m = (SelectiveKernel(8, 2, groups=4, min_hidden=2, dims=dims) if kind == "sk"
         else SplitAttention(8, 2, groups=2, min_hidden=2, dims=dims))
    x = torch.randn(b, 8, *(n,) * dims)
    out, a = m(x), m.gate(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(a.sum(1), torch.ones_like(a.sum(1)))
    m.eval()
    torch.testing.assert_close(m(x[0]), m(x[:1])[0])  # unbatched


def test_they_refuse_to_be_retrofitted_and_identity():
    for cls in (SelectiveKernel, SplitAttention):
        assert cls.retrofit_error == (
            f"{cls.__name__} is a convolution unit (it replaces a block's 3x3 convolution and changes its "
            "output), not a gate that can follow an existing layer; build it into the block instead")
        with pytest.raises(ValueError, match=f"^{cls.__name__} is a convolution unit .*; init='identity' does not apply$"):
            cls(32).init_identity()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"groups must divide channels, got groups=32 and channels=16"):
        SelectiveKernel(16)
    with pytest.raises(ValueError, match=r"groups must divide out_channels, got groups=4 and out_channels=6"):
        SelectiveKernel(8, out_channels=6, groups=4)
    with pytest.raises(ValueError, match="branches must be a positive int, got 0"):
        SelectiveKernel(32, branches=0)
    with pytest.raises(ValueError, match=r"x must have 32 channels \(dim 1\) for this SplitAttention, got 8"):
        SplitAttention(32)(torch.randn(2, 8, 4, 4))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but SelectiveKernel parameters are torch.float32"):
        SelectiveKernel(32)(rand(2, 32, 4, 4))
    with pytest.raises(ValueError, match=r"x must have spatial sizes of at least 1 for SplitAttention, got shape \(2, 32, 0\)"):
        SplitAttention(32, dims=1)(torch.randn(2, 32, 0))


def test_factory_keys():
    assert type(az.create_attention("sk", 64, stride=2)) is SelectiveKernel
    assert type(az.create_attention("splat", 64, radix=4, groups=2)) is SplitAttention


CASES = {"sk": lambda: SelectiveKernel(16, 4, groups=4), "splat": lambda: SplitAttention(16, groups=2)}


@needs_cc
@pytest.mark.parametrize("name", list(CASES))
def test_compile_matches_eager(name):
    torch.manual_seed(0)
    m = randomise(CASES[name]().float()).eval()
    x = torch.randn(2, 16, 6, 6)
    compiled = torch.compile(m, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_export_and_autocast(name):
    torch.manual_seed(0)
    m = randomise(CASES[name]().float()).eval()
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(torch.export.export(m, (x,)).module()(x), m(x), atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), m(x), atol=0.2, rtol=0.05)
