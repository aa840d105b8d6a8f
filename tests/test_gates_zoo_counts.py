"""Parameter counts of the gates of issue 17 in ResNet-50, as their papers report them: each
gate is put into a shape-only (meta) ResNet-50 from `transformers` by `add_attention`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnzoo as az

pytestmark = pytest.mark.usefixtures("single_thread")
transformers = pytest.importorskip("transformers")
RESNET50_STAGES = ((3, 256), (4, 512), (6, 1024), (3, 2048))


def resnet50() -> nn.Module:
    cfg = transformers.ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                                    layer_type="bottleneck", num_labels=1000)
    with torch.device("meta"):  # shapes only
        return transformers.ResNetForImageClassification(cfg)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet50_is_25_56m() -> None:
    assert n_params(resnet50()) == 25_557_032


def test_eca_resnet50_parameters() -> None:
    """ECA paper (abstract): its modules add 80 parameters to ResNet-50. That is the released
    ECA-Net50, k = 3, 5, 5, 7 per stage ("eca_resnet50_k3557" in the authors' README); the
    adaptive rule gives 5, 5, 5, 7 (86 parameters). One bias-free k-tap conv per block."""
    model = resnet50()
    before = n_params(model)
    az.add_attention(model, "eca")
    assert [g.kernel_size for _, g in az.find_attention(model)] == [5] * 3 + [5] * 4 + [5] * 6 + [7] * 3
    assert n_params(model) - before == 86
    released = sum(n * n_params(az.ECA(c, k, device="meta")) for (n, c), k in zip(RESNET50_STAGES, (3, 5, 5, 7)))
    assert released == 80


def test_srm_resnet50_parameters() -> None:
    """SRM paper, ImageNet results: ResNet-50 25.56M, SRM-ResNet-50 25.62M (a reimplementation,
    EvgenyKashin/SRMnet, lists 25,617,448 = 25,557,032 + 60,416): 2C (cfc) + 2C (BN) per block."""
    model = resnet50()
    before = n_params(model)
    az.add_attention(model, "srm")
    assert len(az.find_attention(model)) == 16
    assert n_params(model) - before == sum(n * 4 * c for n, c in RESNET50_STAGES) == 60_416
    assert round(n_params(model) / 1e6, 2) == 25.62


def test_bam_resnet50_parameters() -> None:
    """BAM paper, ImageNet-1K results: ResNet-50 25.56M, ResNet-50 + BAM 25.92M; BAM sits at the
    three bottlenecks between stages (C = 256, 512, 1024), r = 16, two dilated 3x3 convs."""
    model = resnet50()
    before = n_params(model)
    ends = {f"resnet.encoder.stages.{i}" for i in range(3)}
    az.add_attention(model, "bam", where=lambda name, m: name in ends)
    assert [g.channels for _, g in az.find_attention(model)] == [256, 512, 1024]

    def bam(c: int) -> int:
        h = c // 16
        channel = (c * h + h) + 2 * h + (h * c + c)  # fc1, BN1d, fc2
        spatial = (c * h + h) + 2 * h + 2 * (9 * h * h + h + 2 * h) + (h + 1)  # 1x1, BN, 2 x (3x3, BN), 1x1
        return channel + spatial

    assert n_params(model) - before == bam(256) + bam(512) + bam(1024) == 358_067
    assert round(n_params(model) / 1e6, 2) == 25.92


def test_triplet_and_ge_minus_resnet50_parameters() -> None:
    """Triplet attention (authors' README: ResNet-50 + triplet attention, k = 7: 25.56M): three
    7x7 2 -> 1 convs without bias + BatchNorm2d(1) per block. GE-theta-minus is parameter-free
    (GE paper, section 3: its gather is an average and its excite an interpolation)."""
    model = resnet50()
    before = n_params(model)
    az.add_attention(model, "triplet")
    assert n_params(model) - before == 16 * 3 * (2 * 7 * 7 + 2) == 4_800
    assert round(n_params(model) / 1e6, 2) == 25.56
    model = resnet50()
    az.add_attention(model, "ge")
    assert len(az.find_attention(model)) == 16 and n_params(model) == before
