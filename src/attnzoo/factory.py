"""One string-keyed factory for every attention module.

>>> create_attention("se", 64)                 # SqueezeExcite(64)
>>> create_attention("mha", 256, num_heads=8)  # MultiHeadAttention(256, 8)

The second argument is the channel count for the CNN gates ("se", "channel", "spatial",
"cbam", "eca", "ese", "srm", "ge", "coord", "bam", "triplet"; "spatial" has no channels
and ignores it) and the embedding size for the
sequence modules ("mha", "self", "cross", "temporal"). Other keyword arguments go to the class.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .attention import CrossAttention, MultiHeadAttention, SelfAttention
from .gates import (
    BAM, CBAM, ECA, SRM, ChannelAttention, CoordAttention, EffectiveSE, GatherExcite, SpatialAttention,
    SqueezeExcite, TripletAttention, GlobalContext, NonLocal, SelectiveKernel, SimAM, SplitAttention,
)
from .temporal import TemporalAttention

__all__ = ["create_attention", "available_attention"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "se": SqueezeExcite,
    "channel": ChannelAttention,
    "spatial": lambda channels, **kw: SpatialAttention(**kw),
    "cbam": CBAM,
    "eca": ECA,
    "ese": EffectiveSE,
    "srm": SRM,
    "ge": GatherExcite,
    "coord": CoordAttention,
    "bam": BAM,
    "triplet": TripletAttention,
    "mha": MultiHeadAttention,
    "self": SelfAttention,
    "cross": CrossAttention,
    "temporal": TemporalAttention,
    "gc": GlobalContext,
    "nonlocal": NonLocal,
    "sk": SelectiveKernel,
    "splat": SplitAttention,
    "simam": lambda channels, **kw: SimAM(**kw),
}


def available_attention() -> list[str]:
    """The names ``create_attention`` accepts."""
    return sorted(_REGISTRY)


def create_attention(name: str, dim_or_channels: int, **kwargs) -> nn.Module:
    """Build the attention module called ``name`` for ``dim_or_channels`` features."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; available: {', '.join(available_attention())}")
    return _REGISTRY[key](dim_or_channels, **kwargs)
