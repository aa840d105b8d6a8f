"""CNN gates and blocks, one file per family. Each maps a feature map (B, C, *spatial) to a
tensor of the same shape (or, for the conv units of `kernel.py`, to the conv's output), and
`gate(x)` returns the map it applies.

* `context.py`: `NonLocal`, `GlobalContext` (every position's context; residual blocks).
* `kernel.py`: `SelectiveKernel`, `SplitAttention` (attention across conv branches; they
  replace a convolution, they are not put after one).
* `free.py`: `SimAM` (parameter-free, per-element weights).
"""

from .context import GlobalContext, NonLocal
from .free import SimAM
from .kernel import SelectiveKernel, SplitAttention

__all__ = ["NonLocal", "GlobalContext", "SimAM", "SelectiveKernel", "SplitAttention"]
