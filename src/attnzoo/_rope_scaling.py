"""Rotary frequencies: the plain RoPE table and the context-extension schemes.

`parse_scaling` checks a scaling dict once, at construction; `inv_freq` turns it into the
`rotary_dim / 2` inverse frequencies `θ_i` (rotation angle of pair `i` per position) in
the dtype asked for, and `attention_factor` gives the number cos and sin are multiplied by
(1 except for YaRN). The arithmetic follows the order of operations of `transformers`'
`modeling_rope_utils`, so float32 tables agree with theirs to the last bit or two; asked for
float64, every step runs in float64 (the exact table, which `transformers` never builds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

# rope_type -> (required keys, optional keys with their defaults)
_SCHEMES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "default": ((), {}),
    "linear": (("factor",), {}),
    "dynamic": (("factor",), {}),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor"), {"original_max_position_embeddings": None}),
    "yarn": (
        ("factor",),
        {
            "original_max_position_embeddings": None,
            "attention_factor": None,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": None,
            "mscale_all_dim": None,
            "truncate": True,
        },
    ),
}


def _number(key: str, value: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"scaling[{key!r}] must be a number, got {type(value).__name__}")
    if positive and not value > 0:
        raise ValueError(f"scaling[{key!r}] must be > 0, got {value}")
    return float(value)


def parse_scaling(scaling: Mapping[str, Any] | None, max_position_embeddings: int) -> dict[str, Any]:
    """Check a `rope_scaling`-style dict and return it complete (defaults filled in)."""
    if scaling is None:
        return {"rope_type": "default"}
    if not isinstance(scaling, Mapping):
        raise TypeError(f"scaling must be a dict like {{'rope_type': 'linear', 'factor': 2.0}} or None, "
                        f"got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if "rope_type" in scaling and "type" in scaling and scaling["type"] != kind:
        raise ValueError(f"scaling has rope_type={kind!r} and type={scaling['type']!r}; give one")
    if kind not in _SCHEMES:
        raise ValueError(f"scaling['rope_type'] must be one of {sorted(_SCHEMES)}, got {kind!r}")
    required, optional = _SCHEMES[kind]
    given = set(scaling) - {"rope_type", "type"}
    missing = [k for k in required if k not in given]
    if missing:
        raise ValueError(f"scaling of rope_type {kind!r} needs the keys {list(required)}; missing {missing}")
    unknown = sorted(given - set(required) - set(optional))
    if unknown:
        allowed = sorted(set(required) | set(optional))
        raise ValueError(f"scaling of rope_type {kind!r} takes the keys {allowed}; unknown {unknown} "
                         f"(the base and rotary_dim are RotaryEmbedding arguments)")
    out: dict[str, Any] = {"rope_type": kind, **optional}
    for key in given:
        value = scaling[key]
        if key == "truncate":
            if not isinstance(value, bool):
                raise TypeError(f"scaling['truncate'] must be a bool, got {type(value).__name__}")
            out[key] = value
        elif key == "original_max_position_embeddings":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"scaling['original_max_position_embeddings'] must be a positive int, got {value!r}")
            out[key] = value
        elif value is None and key in optional:
            out[key] = None
        else:
            out[key] = _number(key, value)
    if "original_max_position_embeddings" in out and out["original_max_position_embeddings"] is None:
        out["original_max_position_embeddings"] = max_position_embeddings  # as transformers fills it in
    if kind == "llama3" and not out["low_freq_factor"] < out["high_freq_factor"]:
        raise ValueError(f"scaling['low_freq_factor'] must be < scaling['high_freq_factor'], got "
                         f"{out['low_freq_factor']} and {out['high_freq_factor']}")
    return out


def _plain(base: float | Tensor, dim: int, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    """θ_i = base^(-2i/dim), i = 0 .. dim/2 - 1."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(dtype) / dim  # (dim/2,)
    return 1.0 / (base**exponents)


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def attention_factor(cfg: Mapping[str, Any]) -> float:
    """The factor on cos and sin: YaRN's `0.1 ln(s) + 1` (or the one given), else 1."""
    if cfg["rope_type"] != "yarn":
        return 1.0
    if cfg["attention_factor"] is not None:
        return cfg["attention_factor"]
    if cfg["mscale"] and cfg["mscale_all_dim"]:
        return _mscale(cfg["factor"], cfg["mscale"]) / _mscale(cfg["factor"], cfg["mscale_all_dim"])
    return _mscale(cfg["factor"])


def _llama3(theta: Tensor, cfg: Mapping[str, Any]) -> Tensor:
    """Three wavelength bands: short kept, long divided by the factor, the middle blended."""
    factor, low, high = cfg["factor"], cfg["low_freq_factor"], cfg["high_freq_factor"]
    context = cfg["original_max_position_embeddings"]
    wavelength = 2 * math.pi / theta
    long_band = wavelength > context / low
    short_band = wavelength < context / high
    theta_long = torch.where(long_band, theta / factor, theta)
    blend = (context / wavelength - low) / (high - low)  # 0 at the long edge, 1 at the short one
    theta_mid = (1 - blend) * theta_long / factor + blend * theta_long
    return torch.where(~short_band & ~long_band, theta_mid, theta_long)


def _yarn(dim: int, base: float, cfg: Mapping[str, Any], dtype: torch.dtype, device: torch.device | None) -> Tensor:
    """Interpolate the slow pairs, keep the fast ones, a linear ramp between (NTK-by-parts)."""
    factor, context = cfg["factor"], cfg["original_max_position_embeddings"]

    def pair_index(rotations: float) -> float:  # the pair that turns `rotations` times over `context`
        return dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_index(cfg["beta_fast"]), pair_index(cfg["beta_slow"])
    if cfg["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a step instead of a ramp
    ramp = ((torch.arange(dim // 2, dtype=dtype, device=device) - low) / (high - low)).clamp(0, 1)  # (dim/2,)
    powers = base ** (torch.arange(0, dim, 2, device=device).to(dtype) / dim)  # (dim/2,)
    keep = 1 - ramp  # 1: extrapolate (unchanged frequency), 0: interpolate (divided by the factor)
    return (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep


def inv_freq(
    cfg: Mapping[str, Any],
    dim: int,
    base: float,
    max_position_embeddings: int,
    dtype: torch.dtype,
    device: torch.device | None = None,
    seq_len: Tensor | None = None,
) -> Tensor:
    """The `dim / 2` inverse frequencies, in `dtype`; `seq_len` (an integer tensor, largest
    position + 1) matters for "dynamic" only: beyond `max_position_embeddings` the base grows."""
    kind = cfg["rope_type"]
    if kind == "yarn":
        return _yarn(dim, base, cfg, dtype, device)
    theta = _plain(base, dim, dtype, device)
    if kind == "dynamic" and seq_len is not None:
        factor = cfg["factor"]
        length = seq_len.clamp(min=max_position_embeddings).to(device, dtype)  # no NaN where unused
        grown = base * ((factor * length / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return torch.where(seq_len.to(device) > max_position_embeddings, _plain(grown, dim, dtype, device), theta)
    if kind == "linear":
        return theta / cfg["factor"]
    if kind == "llama3":
        return _llama3(theta, cfg)
    return theta
