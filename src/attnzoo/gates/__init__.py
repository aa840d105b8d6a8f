"""CNN gates: one file per family. Each gate maps a feature map (B, C, *spatial) to a
tensor of the same shape, `x * gate(x)`, and `gate(x)` returns the factor it applies
(broadcastable to `x`). `init_identity()` makes that factor exactly 1 where the gate
allows it (`add_attention(init="identity")`), and raises `ValueError` where it cannot.

* `channel.py`: `SqueezeExcite`, `ChannelAttention` (CBAM's), per-channel (B, C, 1, ...).
* `spatial.py`: `SpatialAttention`, `CBAM`, per-position (B, 1, *spatial) / full-size.
* `efficient.py`: `ECA`, `EffectiveSE`, per-channel without a bottleneck.
* `style.py`: `SRM`, per-channel from the mean and standard deviation.
* `gather.py`: `GatherExcite` (GE-theta-minus, GE-theta), per channel and neighbourhood.
* `coord.py`: `CoordAttention`, per channel, row and column (2-D).
* `joint.py`: `BAM`, `TripletAttention`, full-size gates (B, C, *spatial).
"""

from .channel import ChannelAttention, SqueezeExcite, hidden_width
from .coord import CoordAttention
from .efficient import ECA, EffectiveSE, eca_kernel_size
from .gather import GatherExcite
from .joint import BAM, TripletAttention
from .spatial import CBAM, SpatialAttention
from .style import SRM

# Every gate class: what add_attention/find_attention recognise as a gate.
GATES = (SqueezeExcite, ChannelAttention, SpatialAttention, CBAM, ECA, EffectiveSE, SRM,
         GatherExcite, CoordAttention, BAM, TripletAttention)

__all__ = [
    "SqueezeExcite", "ChannelAttention", "hidden_width", "SpatialAttention", "CBAM",
    "ECA", "EffectiveSE", "eca_kernel_size", "SRM", "GatherExcite", "CoordAttention",
    "BAM", "TripletAttention", "GATES",
]
