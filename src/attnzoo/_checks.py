"""Argument checks shared by every attnzoo module.

Each raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad type or dtype)
with a message that names the argument, what was expected and what was given, so
a user never has to decode an error from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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
