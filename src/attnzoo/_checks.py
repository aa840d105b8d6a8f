"""Argument checks shared by every attnzoo module.

Each raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad type or dtype)
with a message that names the argument, what was expected and what was given, so
a user never has to decode an error from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def check_dropout(name: str, p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return float(p)


def check_tensor(name: str, x: object, ndim: int | Sequence[int] | None = None) -> Tensor:
    """Check that ``x`` is a floating-point tensor with one of the allowed ranks."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    return x


def check_dtype_matches(name: str, x: Tensor, dtype: torch.dtype, owner: str) -> None:
    """Input and parameters must share a dtype, except under ``torch.autocast``.

    Autocast hands modules inputs in its lower precision (or leaves them in float32) and
    casts inside each op, exactly as ``nn.Linear``/``nn.Conv2d`` expect; refusing the
    mismatch there would refuse mixed-precision training itself.
    """
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name} has dtype {x.dtype} but {owner} parameters are {dtype}; "
            f"convert the input or the module (module.to({dtype}))"
        )


def check_mask_dtype(name: str, mask: Tensor) -> None:
    """Masks are boolean or floating point; integer masks are ambiguous and rejected."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be a bool or floating-point tensor, got dtype {mask.dtype}; "
            f"use mask.bool() for a boolean mask"
        )


def check_same_device(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """``t`` (a mask) must be on ``ref``'s device; comparing devices costs no sync."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on device {t.device} but {ref_name} is on {ref.device}; "
                         f"move it with {name}.to({ref_name}.device)")


SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


def check_spatial_dims(name: str, value: object) -> int:
    """The number of spatial dimensions a gate is built for: 1, 2 or 3 (as Conv1d/2d/3d)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (1, 2 or 3), got {type(value).__name__}")
    if value not in SPATIAL_NAMES:
        raise ValueError(f"{name} must be 1, 2 or 3 (spatial dimensions), got {value}")
    return value


def is_tracing(x: object) -> bool:
    """True while ``torch.fx.symbolic_trace`` or ``torch.jit.trace`` records a forward.

    Under FX, ``x`` is a ``torch.fx.Proxy``: it has no dtype, rank or sizes to check
    (asking records an op, and ``if`` on the answer fails). Under ``torch.jit.trace``,
    sizes are traced tensors and every Python ``if`` on them is frozen into the graph
    with a warning. So the modules skip their input checks and empty-size branches while
    traced; the recorded graph runs the same ops as eager. ``torch.export`` and
    ``torch.compile`` see real (fake) tensors and keep the checks.
    """
    return isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing()


def holds_no_values(x: Tensor) -> bool:
    """True where the values of ``x`` cannot be read, so checks on them (``.any()``,
    ``.item()``) are skipped and only its shape and dtype are checked.

    That is a tensor on the ``meta`` device (shape inference, models built under
    ``torch.device("meta")``), a FakeTensor (``FakeTensorMode``, ``torch.export``), or a
    forward being traced (see `is_tracing`). ``torch.compile`` keeps the checks: Dynamo
    runs the value test eagerly, outside the graph.
    """
    return x.is_meta or is_fake(x) or is_tracing(x)


def check_feature_map(name: str, x: object, dims: int, owner: str) -> int:
    """``x`` is (B, C, *spatial) or unbatched (C, *spatial) with ``dims`` spatial dims.

    Returns the index of the channel dimension (1 if batched, 0 if unbatched). The
    unbatched form is accepted where torch's ``Conv{dims}d`` accepts it.
    """
    check_tensor(name, x)
    assert isinstance(x, Tensor)
    if x.dim() not in (dims + 2, dims + 1):
        sp = SPATIAL_NAMES[dims]
        hint = ", ".join(f"dims={d} for (B, C, {s})" for d, s in SPATIAL_NAMES.items() if d != dims)
        raise ValueError(
            f"{name} must be {dims + 2}-D (B, C, {sp}) or {dims + 1}-D unbatched (C, {sp}) "
            f"for {owner}(dims={dims}), got shape {tuple(x.shape)}; build it with {hint}"
        )
    return x.dim() - dims - 1


def refuse_torchscript(owner: str) -> None:
    """Raised from ``__prepare_scriptable__``, which ``torch.jit.script`` calls first.

    The modules check their inputs in plain Python (f-string messages, isinstance), which
    TorchScript cannot compile; rather than a long compiler trace deep in the checks, the
    user gets one line naming the ways that do work.
    """
    raise RuntimeError(
        f"{owner} does not support torch.jit.script; use torch.compile(module) or "
        f"torch.export.export(module, args) (torch.jit.trace also works)"
    )
