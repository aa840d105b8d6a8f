"""create_attention builds every module by name and rejects unknown names clearly."""

import pytest
import torch

import attnzoo as az


@pytest.mark.parametrize(
    "name, cls, arg, kwargs, x_shape",
    [
        ("se", az.SqueezeExcite, 16, {}, (2, 16, 5, 5)),
        ("channel", az.ChannelAttention, 16, {"reduction": 4}, (2, 16, 5, 5)),
        ("spatial", az.SpatialAttention, 16, {"kernel_size": 3}, (2, 16, 5, 5)),
        ("cbam", az.CBAM, 16, {}, (2, 16, 5, 5)),
        ("mha", az.MultiHeadAttention, 16, {"num_heads": 4}, (2, 5, 16)),
        ("self", az.SelfAttention, 16, {"num_heads": 2}, (2, 5, 16)),
        ("CROSS", az.CrossAttention, 16, {"num_heads": 2}, (2, 5, 16)),
    ],
)
def test_builds_each_module(name, cls, arg, kwargs, x_shape):
    m = az.create_attention(name, arg, **kwargs)
    assert type(m) is cls
    x = torch.randn(*x_shape)
    out = m(x, x) if name.lower() == "cross" else m(x)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == x.shape


def test_kwargs_reach_the_module():
    assert az.create_attention("se", 64, reduction=8).hidden_channels == 8
    assert az.create_attention("mha", 32, num_heads=4, num_kv_heads=2).num_kv_heads == 2


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown attention 'nope'; available: bam, cbam, channel, coord, cross, eca, ese, "
                       "gc, ge, mha, nonlocal, se, self, simam, sk, spatial, splat, srm, temporal, triplet$"):
        az.create_attention("nope", 8)
    with pytest.raises(TypeError, match="name must be a str"):
        az.create_attention(3, 8)
    assert az.available_attention() == sorted(["se", "channel", "spatial", "cbam", "eca", "ese", "srm", "ge", "coord", "bam",
                                               "triplet", "mha", "self", "cross", "temporal", "gc", "nonlocal", "sk",
                                               "splat", "simam"])
