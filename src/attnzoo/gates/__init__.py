"""CNN gates and blocks: one file per family. Each gate maps a feature map (B, C, *spatial)
to a tensor of the same shape, `x * gate(x)` (or the paper's combination), and `gate(x)`
returns the map it applies (broadcastable to `x`). `init_identity()` makes the gate exactly
the identity where it allows it (`add_attention(init="identity")`), and raises `ValueError`
where it cannot.

* `channel.py`: `SqueezeExcite`, `ChannelAttention` (CBAM's), per-channel (B, C, 1, ...).
* `spatial.py`: `SpatialAttention`, `CBAM`, per-position (B, 1, *spatial) / full-size.
* `efficient.py`: `ECA`, `EffectiveSE`, per-channel without a bottleneck.
* `style.py`: `SRM`, per-channel from the mean and standard deviation.
* `gather.py`: `GatherExcite` (GE-theta-minus, GE-theta), per channel and neighbourhood.
* `coord.py`: `CoordAttention`, per channel, row and column (2-D).
* `joint.py`: `BAM`, `TripletAttention`, full-size gates (B, C, *spatial).
* `context.py`: `NonLocal`, `GlobalContext` (every position's context; residual blocks).
* `kernel.py`: `SelectiveKernel`, `SplitAttention` (attention across conv branches; they
  replace a convolution, they are not put after one).
* `free.py`: `SimAM` (parameter-free, per-element weights).
"""

from .channel import ChannelAttention, SqueezeExcite, hidden_width
from .context import GlobalContext, NonLocal
from .coord import CoordAttention
from .efficient import ECA, EffectiveSE, eca_kernel_size
from .free import SimAM
from .gather import GatherExcite
from .joint import BAM, TripletAttention
from .kernel import SelectiveKernel, SplitAttention
from .spatial import CBAM, SpatialAttention
from .style import SRM

# Every gate class add_attention/find_attention recognise as a gate (the conv units of
# kernel.py replace a convolution and are not put after one).
GATES = (SqueezeExcite, ChannelAttention, SpatialAttention, CBAM, ECA, EffectiveSE, SRM,
         GatherExcite, CoordAttention, BAM, TripletAttention, GlobalContext, NonLocal, SimAM)

__all__ = [
    "SqueezeExcite", "ChannelAttention", "hidden_width", "SpatialAttention", "CBAM",
    "ECA", "EffectiveSE", "eca_kernel_size", "SRM", "GatherExcite", "CoordAttention",
    "BAM", "TripletAttention", "NonLocal", "GlobalContext", "SimAM", "SelectiveKernel",
    "SplitAttention", "GATES",
]
