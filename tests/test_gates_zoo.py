"""The gates of issue 17 (ECA, eSE, SRM, Gather-Excite, coordinate attention, BAM, triplet
attention) against their papers' formulas, written again here in float64 from the papers
and the authors' code (explicit pooling loops, convolutions as `unfold` + matmul, sigmoid
as 1 / (1 + exp(-t)), BatchNorm as its formula), never through the modules' own code path.
ResNet-50 parameter counts: test_gates_zoo_counts.py; errors: test_gates_zoo_errors.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnzoo as az
from attnzoo.gates import eca_kernel_size

pytestmark = pytest.mark.usefixtures("single_thread")
D = torch.float64


def sig(t: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def hsig(t: Tensor) -> Tensor:
    return (t + 3.0).clamp(0.0, 6.0) / 6.0


def conv2d(x: Tensor, w: Tensor, b: Tensor | None = None, *, stride: int = 1, padding: int = 0,
           dilation: int = 1, depthwise: bool = False) -> Tensor:
    """A 2-D convolution as unfold + matmul (depthwise: one filter per channel)."""
    bsz, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (B, Cin*kh*kw, L)
    if depthwise:
        out = torch.einsum("bckl,ck->bcl", cols.view(bsz, cin, kh * kw, -1), w.reshape(cout, kh * kw))
    else:
        out = w.reshape(cout, -1) @ cols  # (B, Cout, L)
    out = out.reshape(bsz, cout, ho, wo)
    return out if b is None else out + b.view(1, -1, 1, 1)


def bn_eval(y: Tensor, bn: nn.Module) -> Tensor:
    """BatchNorm in eval mode along dim 1: (y - running_mean) / sqrt(running_var + eps) * w + b."""
    shape = (1, -1) + (1,) * (y.dim() - 2)
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def randomise(m: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BatchNorm running statistics, float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    m = m.to(D).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D) * 0.5)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g, dtype=D) * 0.3)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g, dtype=D) + 0.5)
    return m


def x64(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- ECA


@pytest.mark.parametrize(("channels", "k"), [(1, 1), (8, 3), (64, 3), (256, 5), (512, 5), (1024, 5), (2048, 7), (1 << 15, 9)])
def test_eca_kernel_size_is_the_papers_rule(channels: int, k: int) -> None:
    """ECA eq. 12 with gamma=2, b=1, as the paper's listing rounds it: t = int(|(log2 C + 1) / 2|), odd or t + 1."""
    t = int(abs((math.log2(channels) + 1) / 2))
    assert eca_kernel_size(channels) == (t if t % 2 else t + 1) == k
    assert az.ECA(channels).kernel_size == k


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(("channels", "k"), [(12, None), (12, 5), (3, 7)])
def test_eca_matches_formula(dims: int, channels: int, k: int | None) -> None:
    m = randomise(az.ECA(channels, k, dims=dims))
    x = x64(2, channels, *[4, 3, 2][:dims])
    k = m.kernel_size
    z = x.flatten(2).mean(-1)  # (B, C)
    zp = F.pad(z, ((k - 1) // 2, (k - 1) // 2))  # zeros outside the channels
    w = m.conv.weight.view(k)
    logits = torch.stack([sum(w[j] * zp[:, c + j] for j in range(k)) for c in range(channels)], dim=1)
    gate = sig(logits).view(2, channels, *[1] * dims)
    close(m.gate(x), gate)
    close(m(x), x * gate)


# ---------------------------------------------------------------- eSE


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_effective_se_matches_formula(dims: int) -> None:
    m = randomise(az.EffectiveSE(6, dims=dims))
    x = x64(3, 6, *[5, 4, 2][:dims])
    z = x.flatten(2).mean(-1)
    gate = hsig(z @ m.fc.weight.T + m.fc.bias).view(3, 6, *[1] * dims)
    close(m.gate(x), gate)
    close(m(x), x * gate)
    assert sum(p.numel() for p in m.parameters()) == 6 * 6 + 6  # one C x C layer, no reduction


# ---------------------------------------------------------------- SRM


def srm_reference(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    flat = x.flatten(2)
    n = flat.shape[-1]
    mu = flat.sum(-1) / n
    sigma = torch.sqrt(((flat - mu[..., None]) ** 2).sum(-1) / (n - 1)) if n > 1 else torch.zeros_like(mu)
    z = m.cfc[:, 0] * mu + m.cfc[:, 1] * sigma  # (B, C)
    if train:  # batch statistics, biased variance
        zm = z.mean(0)
        zhat = (z - zm) / torch.sqrt(((z - zm) ** 2).mean(0) + m.bn.eps) * m.bn.weight + m.bn.bias
    else:
        zhat = bn_eval(z, m.bn)
    return sig(zhat).view(*z.shape, *[1] * (x.dim() - 2))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("train", [False, True])
def test_srm_matches_formula(dims: int, train: bool) -> None:
    m = randomise(az.SRM(5, dims=dims)).train(train)
    x = x64(4, 5, *[6, 3, 2][:dims])
    gate = srm_reference(m, x, train)
    close(m.gate(x), gate)
    close(m(x), x * gate)


def test_srm_single_position_is_finite_and_starts_like_the_official_code() -> None:
    m = az.SRM(4)
    assert torch.equal(m.cfc, torch.zeros(4, 2))  # official init: cfc = 0
    assert torch.equal(m.gate(torch.randn(3, 4, 5, 5)), torch.full((3, 4, 1, 1), 0.5))
    m = randomise(m)
    x = x64(2, 4, 1, 1)
    close(m.gate(x), srm_reference(m, x, train=False))  # std of one value: 0, not NaN


# ---------------------------------------------------------------- Gather-Excite


def ge_minus_reference(x: Tensor, e: int) -> Tensor:
    """GE-theta-minus: average of each e x e window (stride e), each position gets its window's value."""
    if e == 0:
        return sig(x.flatten(2).mean(-1)).view(*x.shape[:2], *[1] * (x.dim() - 2))
    out = torch.empty_like(x)
    if x.dim() == 3:
        for i in range(x.shape[2]):
            i0 = i // e * e
            out[..., i] = sig(x[..., i0:i0 + e].mean(-1))
        return out
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            i0, j0 = i // e * e, j // e * e
            out[..., i, j] = sig(x[..., i0:i0 + e, j0:j0 + e].mean((-1, -2)))
    return out


@pytest.mark.parametrize("e", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (2, 3, 8, 8), (2, 3, 9)])
def test_gather_excite_minus_matches_formula(e: int, shape: tuple[int, ...]) -> None:
    m = az.GatherExcite(3, e, dims=len(shape) - 2)
    assert not list(m.parameters())  # parameter-free
    x = x64(*shape)
    gate = ge_minus_reference(x, e)
    close(m.gate(x), gate)
    close(m(x), x * gate)


@pytest.mark.parametrize("e", [2, 4, 8])
@pytest.mark.parametrize("size", [(8, 8), (7, 5)])
def test_gather_excite_theta_matches_formula(e: int, size: tuple[int, int]) -> None:
    m = randomise(az.GatherExcite(3, e, params=True))
    x = x64(2, 3, *size)
    layers = list(m.gather)
    convs = [c for c in layers if isinstance(c, nn.Conv2d)]
    bns = [b for b in layers if isinstance(b, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == int(math.log2(e))
    g = x
    for i, (c, b) in enumerate(zip(convs, bns)):
        g = bn_eval(conv2d(g, c.weight, stride=2, padding=1, depthwise=True), b)
        if i < len(convs) - 1:
            g = g.clamp_min(0)
    gate = torch.empty_like(x)
    for i in range(size[0]):
        for j in range(size[1]):
            gate[..., i, j] = sig(g[..., i // e, j // e])
    close(m.gate(x), gate)
    close(m(x), x * gate)


# ---------------------------------------------------------------- coordinate attention


def coord_reference(m: nn.Module, x: Tensor, train: bool) -> Tensor:
    b, c, h, w = x.shape
    zh, zw = x.mean(3), x.mean(2)  # (B, C, H), (B, C, W)
    t = torch.einsum("mc,bcl->bml", m.conv1.weight[:, :, 0, 0], torch.cat((zh, zw), -1)) + m.conv1.bias[:, None]
    if train:  # BatchNorm2d statistics over the batch and the H + W positions
        mean = t.mean((0, 2), keepdim=True)
        var = ((t - mean) ** 2).mean((0, 2), keepdim=True)
        t = (t - mean) / torch.sqrt(var + m.bn1.eps) * m.bn1.weight[:, None] + m.bn1.bias[:, None]
    else:
        t = bn_eval(t, m.bn1)
    y = t * hsig(t)  # h_swish
    yh, yw = y[..., :h], y[..., h:]
    ah = sig(torch.einsum("cm,bml->bcl", m.conv_h.weight[:, :, 0, 0], yh) + m.conv_h.bias[:, None])
    aw = sig(torch.einsum("cm,bml->bcl", m.conv_w.weight[:, :, 0, 0], yw) + m.conv_w.bias[:, None])
    return ah[..., :, None] * aw[..., None, :]


@pytest.mark.parametrize("train", [False, True])
def test_coord_attention_matches_formula(train: bool) -> None:
    m = randomise(az.CoordAttention(16, reduction=4)).train(train)
    assert m.hidden_channels == 8  # max(8, 16 // 4)
    x = x64(3, 16, 5, 7)
    gate = coord_reference(m, x, train)
    close(m.gate(x), gate)
    close(m(x), x * gate)


@pytest.mark.parametrize(("channels", "reduction", "mip"), [(16, 32, 8), (512, 32, 16), (64, 4, 16), (3, 32, 8)])
def test_coord_attention_hidden_width_is_the_official_max_8(channels: int, reduction: int, mip: int) -> None:
    assert az.CoordAttention(channels, reduction).conv1.out_channels == mip


# ---------------------------------------------------------------- BAM


def bam_reference(m: nn.Module, x: Tensor) -> Tensor:
    d = m.dilation
    z = x.mean((2, 3))
    h = bn_eval(z @ m.fc1.weight.T + m.fc1.bias, m.bn_c).clamp_min(0)
    mc = (h @ m.fc2.weight.T + m.fc2.bias)[:, :, None, None]  # (B, C, 1, 1)
    s = m.spatial
    t = bn_eval(conv2d(x, s[0].weight, s[0].bias), s[1]).clamp_min(0)
    t = bn_eval(conv2d(t, s[3].weight, s[3].bias, padding=d, dilation=d), s[4]).clamp_min(0)
    t = bn_eval(conv2d(t, s[6].weight, s[6].bias, padding=d, dilation=d), s[7]).clamp_min(0)
    ms = conv2d(t, s[9].weight, s[9].bias)  # (B, 1, H, W)
    return 1 + sig(mc + ms if m.combine == "sum" else mc * ms)


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("dilation", [4, 1])
def test_bam_matches_formula(combine: str, dilation: int) -> None:
    m = randomise(az.BAM(32, reduction=8, dilation=dilation, combine=combine))
    x = x64(2, 32, 9, 6)
    gate = bam_reference(m, x)
    assert gate.shape == x.shape and bool((gate > 1).all() and (gate < 2).all())
    close(m.gate(x), gate)
    close(m(x), x * gate)


# ---------------------------------------------------------------- triplet attention


def triplet_reference(m: nn.Module, x: Tensor) -> Tensor:
    """The authors' layout: rotate, Z-pool [max; mean] over dim 1, conv, BN, sigmoid, rotate back."""

    def branch(v: Tensor, part: nn.Module) -> Tensor:
        pooled = torch.cat((v.max(1, keepdim=True).values, v.mean(1, keepdim=True)), 1)
        k = part.conv.kernel_size[0]
        return v * sig(bn_eval(conv2d(pooled, part.conv.weight, padding=k // 2), part.bn))

    out1 = branch(x.permute(0, 2, 1, 3), m.cw).permute(0, 2, 1, 3)
    out2 = branch(x.permute(0, 3, 2, 1), m.hc).permute(0, 3, 2, 1)
    if m.hw is None:
        return (out1 + out2) / 2
    return (out1 + out2 + branch(x, m.hw)) / 3


@pytest.mark.parametrize(("k", "no_spatial"), [(7, False), (3, False), (5, True)])
def test_triplet_attention_matches_formula(k: int, no_spatial: bool) -> None:
    m = randomise(az.TripletAttention(6, k, no_spatial=no_spatial))
    x = x64(2, 6, 5, 4)
    close(m(x), triplet_reference(m, x))
    close(x * m.gate(x), triplet_reference(m, x))
