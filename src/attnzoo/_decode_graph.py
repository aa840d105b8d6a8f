"""One static-shape decoding step, replayed as a CUDA graph: the GPU stops waiting on Python.

A decoding step launches a few hundred small kernels; on a GPU, launching them from
Python takes longer than running them. `GraphedStep` captures one step once
(``torch.cuda.CUDAGraph``) over static buffers, then each token costs a copy into those
buffers and one ``replay()``.

The captured step must have static shapes, so it attends over the WHOLE preallocated
cache ``(B, Hkv, max_len, hs)`` with a mask of the valid positions ``arange(max_len) <=
pos``, and takes the position as a device tensor (see ``attend_cached`` with a tensor
``pos``). On the CPU, or whenever something watches the modules (see
`graph_blocker`), decoding stays eager and dynamic-shape instead (attention over the
valid prefix only, which is what a CPU wants).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["GraphedStep", "graph_blocker"]

StepFn = Callable[[Tensor, Tensor], Tensor]  # (tokens (B, 1) long, pos (1,) long) -> logits (B, V)


def graph_blocker(model: nn.Module, device: torch.device) -> str | None:
    """Why ``model`` must not be decoded by a captured graph here, or None if it may.

    A graph replays kernels without running any Python, so it would hide the model from
    anything that observes it call by call: a recorder patching a module's ``attend`` (an
    instance attribute), forward hooks (per module or global), or an active
    ``TorchFunctionMode``. Those, and any device but CUDA, keep decoding eager.
    """
    if device.type != "cuda":
        return f"device {device.type}: CUDA graphs need a CUDA device"
    if torch.overrides._get_current_function_mode_stack():
        return "a TorchFunctionMode is active"
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return "global forward hooks are registered"
    for name, m in model.named_modules():
        if "attend" in vars(m) or "forward" in vars(m):
            return f"module {name or '<root>'} has a patched attend/forward"
        if m._forward_hooks or m._forward_pre_hooks:
            return f"module {name or '<root>'} has forward hooks"
    return None


class GraphedStep:
    """``step(tokens, pos)`` captured once as a CUDA graph; call it like the step itself.

    ``tokens`` (B, 1) long and ``pos`` an int; returns the logits (B, V) in a static
    buffer, overwritten by the next call (copy it to keep it). Building it runs the step
    three times at position 0 (two warm-up calls on a side stream, then the capture):
    the first real step overwrites what they wrote into the caches.
    """

    def __init__(self, step: StepFn, batch_size: int, device: torch.device) -> None:
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: lazy initialisations happen outside the capture
            for _ in range(2):
                step(self.tokens, self.pos)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.tokens, self.pos)  # (B, V), a static output buffer

    def __call__(self, tokens: Tensor, pos: int) -> Tensor:
        self.tokens.copy_(tokens)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.logits
