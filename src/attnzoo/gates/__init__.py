"""CNN gates: one file per family. Each gate maps a feature map (B, C, *spatial) to a
tensor of the same shape, `x * gate(x)` (or its paper's combination), and `gate(x)`
returns the map it applies.

* `channel.py`: `SqueezeExcite`, `ChannelAttention` (per-channel weights, (B, C, 1, ...)).
* `spatial.py`: `SpatialAttention`, `CBAM` (per-position weights, (B, 1, *spatial)).
"""

from .channel import ChannelAttention, SqueezeExcite, hidden_width
from .spatial import CBAM, SpatialAttention

__all__ = ["SqueezeExcite", "ChannelAttention", "hidden_width", "SpatialAttention", "CBAM"]
