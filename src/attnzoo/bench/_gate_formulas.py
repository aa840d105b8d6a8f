"""The `gates` bench group's references: each gate's paper formula written plainly in torch.

Every function takes the attnzoo module (for its weights only) and the branch output `x`,
(B, C, H, W), and returns what the module returns, in straightforward torch ops as a user
would write the paper's equations: pooling with `mean`/`amax`, the (HW)² score matrix
materialised for the non-local block, the permutes of the triplet-attention code, and so
on. BatchNorm runs in training mode with batch statistics (`F.batch_norm(..., None, None,
training=True)`), as the module does in `train()`; nothing here updates running stats.
The two conv units (`SelectiveKernel`, `SplitAttention`) take the stage's mid map
(B, C_mid, H, W) instead: they replace the 3x3 convolution.

`PAPER` holds the FLOPs overhead the papers report for ResNet-50, with the citation;
gates whose paper figure I could not check have none (never a guess).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cases_models import literal_cbam, literal_se

__all__ = ["FORMULAS", "PAPER"]


def _bn(t: Tensor, bn: nn.Module) -> Tensor:
    return F.batch_norm(t, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)


def channel_attention(m, x: Tensor) -> Tensor:
    """CBAM eq. 2: sigmoid(MLP(avgpool) + MLP(maxpool)) times x."""
    def mlp(z: Tensor) -> Tensor:
        return m.fc2(torch.relu(m.fc1(z)))

    g = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))  # (B, C)
    return x * g[:, :, None, None]


def spatial_attention(m, x: Tensor) -> Tensor:
    """CBAM eq. 3: sigmoid(conv7x7([mean_c; max_c])) times x."""
    maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # (B, 2, H, W)
    return x * torch.sigmoid(m.conv(maps))


def eca(m, x: Tensor) -> Tensor:
    """ECA: a 1-D conv of size k across the channels of the pooled vector, sigmoid."""
    z = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C)
    g = torch.sigmoid(m.conv(z)).squeeze(1)  # (B, C)
    return x * g[:, :, None, None]


def effective_se(m, x: Tensor) -> Tensor:
    """eSE (CenterMask): one C -> C fc on the pooled vector, hard sigmoid."""
    g = F.hardsigmoid(m.fc(x.mean((2, 3))))  # (B, C)
    return x * g[:, :, None, None]


def srm(m, x: Tensor) -> Tensor:
    """SRM: style pooling (mean, std), channel-wise fc over the two, BatchNorm, sigmoid."""
    mu, sd = x.mean((2, 3)), x.std((2, 3))  # (B, C) each, std unbiased
    z = mu * m.cfc[:, 0] + sd * m.cfc[:, 1]  # (B, C)
    return x * torch.sigmoid(_bn(z, m.bn))[:, :, None, None]


def gather_excite(m, x: Tensor) -> Tensor:
    """GE-theta-minus with the global extent: sigmoid of the spatial mean."""
    return x * torch.sigmoid(x.mean((2, 3), keepdim=True))


def coord_attention(m, x: Tensor) -> Tensor:
    """Coordinate attention: pool along W and along H, shared 1x1 conv + BN + h-swish,
    then one 1x1 conv per direction, sigmoid, x * a_h * a_w."""
    h = x.shape[2]
    zh, zw = x.mean(3, keepdim=True), x.mean(2, keepdim=True).permute(0, 1, 3, 2)  # (B, C, H, 1), (B, C, W, 1)
    y = _bn(m.conv1(torch.cat([zh, zw], dim=2)), m.bn1)  # (B, mip, H + W, 1)
    y = y * F.relu6(y + 3) / 6
    a_h = torch.sigmoid(m.conv_h(y[:, :, :h]))  # (B, C, H, 1)
    a_w = torch.sigmoid(m.conv_w(y[:, :, h:].permute(0, 1, 3, 2)))  # (B, C, 1, W)
    return x * a_h * a_w


def bam(m, x: Tensor) -> Tensor:
    """BAM: x * (1 + sigmoid(Mc + Ms)), Mc an MLP with BN, Ms dilated convs with BN."""
    mc = m.fc2(torch.relu(_bn(m.fc1(x.mean((2, 3))), m.bn_c)))[:, :, None, None]  # (B, C, 1, 1)
    s = m.spatial
    t = x
    for conv, bn in ((s[0], s[1]), (s[3], s[4]), (s[6], s[7])):
        t = torch.relu(_bn(conv(t), bn))
    ms = s[9](t)  # (B, 1, H, W)
    return x * (1 + torch.sigmoid(mc + ms))


def triplet_attention(m, x: Tensor) -> Tensor:
    """Triplet attention as its code reads: rotate, Z-pool, conv + BN, sigmoid, scale,
    rotate back; the three branches averaged."""
    def branch(t: Tensor, zc: nn.Module) -> Tensor:
        pooled = torch.cat([t.amax(1, keepdim=True), t.mean(1, keepdim=True)], dim=1)  # (B, 2, ., .)
        return t * torch.sigmoid(_bn(zc.conv(pooled), zc.bn))

    cw = branch(x.permute(0, 2, 1, 3), m.cw).permute(0, 2, 1, 3)  # C <-> H rotated: pool over H
    hc = branch(x.permute(0, 3, 2, 1), m.hc).permute(0, 3, 2, 1)  # C <-> W rotated: pool over W
    return (cw + hc + branch(x, m.hw)) / 3


def global_context(m, x: Tensor) -> Tensor:
    """GC block: softmax context pooling, bottleneck transform with LayerNorm, add."""
    b, c = x.shape[:2]
    w = torch.softmax(m.conv_mask(x).view(b, 1, -1), dim=-1)  # (B, 1, HW)
    context = torch.bmm(x.view(b, c, -1), w.transpose(1, 2)).view(b, c)  # (B, C)
    t = m.fc2(torch.relu(m.norm(m.fc1(context))))  # (B, C)
    return x + t[:, :, None, None]


def non_local(m, x: Tensor) -> Tensor:
    """Embedded-Gaussian non-local block: the (HW)² softmax matrix written out."""
    b, c, h, w = x.shape
    theta = m.theta(x).view(b, -1, h * w).transpose(1, 2)  # (B, HW, d)
    phi = m.phi(x).view(b, -1, h * w)  # (B, d, HW)
    g = m.g(x).view(b, -1, h * w).transpose(1, 2)  # (B, HW, d)
    f = torch.softmax(theta @ phi, dim=-1)  # (B, HW, HW)
    y = (f @ g).transpose(1, 2).reshape(b, -1, h, w)  # (B, d, H, W)
    return x + _bn(m.W(y), m.bn)


def simam(m, x: Tensor) -> Tensor:
    """SimAM: x * sigmoid((x - mu)² / (4 (var + lambda)) + 1/2), var over n = HW - 1."""
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean((2, 3), keepdim=True)) ** 2
    e_inv = d / (4 * (d.sum((2, 3), keepdim=True) / n + m.e_lambda)) + 0.5
    return x * torch.sigmoid(e_inv)


def selective_kernel(m, x: Tensor) -> Tensor:
    """SKNet: split into dilated 3x3 branches, fuse by sum + pool + fc, softmax across
    branches, select by weighted sum."""
    u = [torch.relu(_bn(seq[0](x), seq[1])) for seq in m.convs]  # M x (B, C, H, W)
    s = sum(u).mean((2, 3))  # (B, C)
    z = torch.relu(_bn(m.fc1(s), m.bn))  # (B, d)
    a = torch.softmax(m.fc2(z).view(x.shape[0], m.branches, -1), dim=1)  # (B, M, C)
    return sum(a[:, i, :, None, None] * u[i] for i in range(m.branches))


def split_attention(m, x: Tensor) -> Tensor:
    """ResNeSt split attention (radix r, cardinality k) as its code reads: rSoftmax over
    the radix splits of each cardinal group."""
    b, r, c = x.shape[0], m.radix, m.out_channels
    u = torch.relu(_bn(m.conv(x), m.bn0))  # (B, r C, H, W)
    splits = torch.split(u, c, dim=1)  # r x (B, C, H, W)
    gap = sum(splits).mean((2, 3), keepdim=True).squeeze(-1)  # (B, C, 1)
    att = m.fc2(torch.relu(_bn(m.fc1(gap), m.bn1)))  # (B, r C, 1)
    att = att.view(b, m.groups, r, -1).transpose(1, 2)  # (B, r, k, C / k)
    att = (torch.softmax(att, dim=1) if r > 1 else torch.sigmoid(att)).reshape(b, r, c)  # (B, r, C)
    return sum(att[:, i, :, None, None] * splits[i] for i in range(r))


#: gate name -> plain formula (module, x) -> output.
FORMULAS = {
    "SqueezeExcite": literal_se, "ChannelAttention": channel_attention, "SpatialAttention": spatial_attention,
    "CBAM": literal_cbam, "ECA": eca, "EffectiveSE": effective_se, "SRM": srm, "GatherExcite": gather_excite,
    "CoordAttention": coord_attention, "BAM": bam, "TripletAttention": triplet_attention,
    "GlobalContext": global_context, "NonLocal": non_local, "SimAM": simam,
    "SelectiveKernel": selective_kernel, "SplitAttention": split_attention,
}

#: gate name -> (FLOPs overhead on ResNet-50 as the paper gives it, citation).
PAPER = {
    "SqueezeExcite": ("3.87 vs 3.86 GFLOPs (+0.26 %)",
                      "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018: SE-ResNet-50 vs ResNet-50"),
    "ECA": ("negligible (3.86 vs 3.86 GFLOPs)",
            "Wang et al., ECA-Net, CVPR 2020: ECA-Net50 vs ResNet-50"),
    "GlobalContext": ("+0.26 % (r=16, after every block)",
                      "Cao et al., GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond, ICCVW 2019"),
}
