"""Argument and input errors of the gates of issue 17: the exact messages."""

from __future__ import annotations

import pytest
import torch

import attnzoo as az

D = torch.float64
ALL = [("eca", {}), ("ese", {}), ("srm", {}), ("ge", {}), ("ge", {"extent": 2, "params": True}),
       ("coord", {}), ("bam", {}), ("triplet", {})]


@pytest.mark.parametrize(("kind", "kw"), ALL)
def test_bad_channels(kind: str, kw: dict) -> None:
    with pytest.raises(ValueError, match=r"^channels must be a positive int, got 0$"):
        az.create_attention(kind, 0, **kw)
    with pytest.raises(ValueError, match=r"^channels must be a positive int, got -3$"):
        az.create_attention(kind, -3, **kw)
    with pytest.raises(TypeError, match=r"^channels must be an int, got float$"):
        az.create_attention(kind, 8.0, **kw)


@pytest.mark.parametrize(("kind", "kw"), ALL)
def test_bad_input_rank_channels_dtype(kind: str, kw: dict) -> None:
    m = az.create_attention(kind, 8, **kw)
    name = type(m).__name__
    with pytest.raises(ValueError, match=rf"^x must be 4-D \(B, C, H, W\) or 3-D unbatched \(C, H, W\) for {name}\(dims=2\), got shape \(2, 8\); "):
        m(torch.randn(2, 8))
    with pytest.raises(ValueError, match=rf"^x must have 8 channels \(dim 1\) for this {name}, got 5 \(shape \(2, 5, 4, 4\)\)$"):
        m(torch.randn(2, 5, 4, 4))
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor, got dtype torch.int64$"):
        m(torch.ones(2, 8, 4, 4, dtype=torch.long))
    if list(m.parameters()):
        with pytest.raises(TypeError, match=rf"^x has dtype torch.float64 but {name} parameters are torch.float32; "):
            m(torch.randn(2, 8, 4, 4, dtype=D))


@pytest.mark.parametrize("kind", ["coord", "triplet"])
@pytest.mark.parametrize("dims", [1, 3])
def test_two_d_only_gates_refuse_other_dims(kind: str, dims: int) -> None:
    name = type(az.create_attention(kind, 8)).__name__
    with pytest.raises(ValueError, match=rf"^dims must be 2 for {name} \(it is defined on \(B, C, H, W\) maps\), got {dims}$"):
        az.create_attention(kind, 8, dims=dims)


def test_bad_gate_arguments() -> None:
    with pytest.raises(ValueError, match=r"^kernel_size must be odd \(padding \(k - 1\) // 2 keeps C\), got 4$"):
        az.ECA(8, 4)
    with pytest.raises(ValueError, match=r"^kernel_size must be a positive int, got 0$"):
        az.ECA(8, 0)
    with pytest.raises(ValueError, match=r"^gamma must be a positive int, got 0$"):
        az.ECA(8, gamma=0)
    with pytest.raises(ValueError, match=r"^extent must be a power of two >= 2 with params=True \(log2\(extent\) stride-2 convs\), got 3$"):
        az.GatherExcite(8, 3, params=True)
    with pytest.raises(ValueError, match=r"^extent must be a power of two >= 2 with params=True .*got 0$"):
        az.GatherExcite(8, 0, params=True)
    with pytest.raises(ValueError, match=r"^extent must be a positive int, got -1$"):
        az.GatherExcite(8, -1)
    with pytest.raises(TypeError, match=r"^extent must be an int \(0 for the whole map\), got float$"):
        az.GatherExcite(8, 2.0)
    with pytest.raises(TypeError, match=r"^params must be a bool, got int$"):
        az.GatherExcite(8, 2, params=1)
    with pytest.raises(ValueError, match=r"^combine must be 'sum' or 'product', got 'max'$"):
        az.BAM(16, combine="max")
    with pytest.raises(ValueError, match=r"^dilation must be a positive int, got 0$"):
        az.BAM(16, dilation=0)
    with pytest.raises(ValueError, match=r"^reduction must be a positive int, got 0$"):
        az.CoordAttention(16, 0)
    with pytest.raises(ValueError, match=r"^kernel_size must be odd \(padding kernel_size // 2 keeps H, W\), got 6$"):
        az.TripletAttention(8, 6)
    with pytest.raises(ValueError, match=r"^dims must be 1, 2 or 3 \(spatial dimensions\), got 4$"):
        az.SRM(8, dims=4)
