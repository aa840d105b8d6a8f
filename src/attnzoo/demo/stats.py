"""The tour's statistics, in one place: mean and sd over seeds, and when a paired difference
is called significant.

Reproducibility: a run is bit-identical only on the same machine type (CPU model) with the
same torch build. Elsewhere float rounding differs in the last bits, training drifts apart,
and each seed's accuracy is in effect a fresh draw; so the mean difference over ``n`` seeds
can move by about the spread of the difference between two independent means,
``sd · sqrt(2 / n)``. A finding that must read the same on any machine therefore needs more
than a 95% interval that excludes 0:

* at least ``MIN_SEEDS`` seeds, and
* a 95% interval clear of 0 by a margin, ``t · sd · sqrt(2 / n)`` (the 95% half-width of
  a rerun's shift): after such a shift the rerun's own interval still excludes 0.

Anything less is "not conclusive", with the number of seeds that the same mean and sd
would need (``seeds_needed``). Differences are in accuracy POINTS (x100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["MIN_SEEDS", "REPRODUCIBLE", "RULE", "mean_std", "t95", "paired_difference", "seeds_needed", "evidence"]

#: The fewest seeds for a finding to be called significant.
MIN_SEEDS = 3
#: What is reproducible, in the words README, ``--help``, the report and the docs use.
REPRODUCIBLE = ("the same --seed gives bit-identical numbers (timings aside) only on the same machine type "
                "(CPU model) with the same torch build and --device cpu; on other machines the numbers differ "
                "within the spread over seeds, and the findings are worded to hold there too")
#: The rule in one sentence, for the report and README.
RULE = (f"a difference is called significant only with at least {MIN_SEEDS} seeds and a 95% interval that "
        "clears 0 by the margin a rerun on another machine type may shift it (t·sd·√(2/n)); otherwise it is "
        "\"not conclusive\", with the seeds the same mean and sd would need")
#: A finding that would need more seeds than this is reported as out of reach.
MAX_SEEDS = 1000

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def t95(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` >= 1 degrees of freedom
    (beyond 30: the table's last value shrunk towards 1.96 by the usual 1/df term)."""
    if df <= len(_T95):
        return _T95[df - 1]
    return 1.96 + 2.4 / df  # within 0.002 of the exact value for df > 30


def _bounds(m: float, s: float, n: int) -> tuple[float, float, float]:
    """(lower, upper end of the 95% interval, margin a rerun elsewhere may shift the mean by)."""
    t = t95(n - 1)
    half = t * s / math.sqrt(n)
    return m - half, m + half, t * s * math.sqrt(2.0 / n)


def _holds(m: float, s: float, n: int) -> bool:
    lo, hi, margin = _bounds(m, s, n)
    return n >= MIN_SEEDS and (lo > margin or hi < -margin)


def seeds_needed(m: float, s: float) -> int | None:
    """The fewest seeds at which a mean difference ``m`` with sd ``s`` (points) would be
    called significant, or None when no number up to ``MAX_SEEDS`` would (e.g. ``m == 0``)."""
    for n in range(MIN_SEEDS, MAX_SEEDS + 1):
        if _holds(m, s, n):
            return n
    return None


def paired_difference(treated: Sequence[float], control: Sequence[float]) -> dict[str, Any]:
    """Paired comparison over seeds, in accuracy points: mean, sd, 95% t interval,
    ``margin_points`` (see the module doc), ``significant`` (the rule above) and
    ``seeds_needed`` (None where already significant or out of reach)."""
    if len(treated) != len(control) or not treated:
        raise ValueError(f"treated and control must be equally long and not empty, got {len(treated)} "
                         f"and {len(control)} values")
    diffs = [100.0 * (a - b) for a, b in zip(treated, control)]
    m, s = mean_std(diffs)
    n = len(diffs)
    if n < 2:
        lo, hi, margin = m, m, math.inf
    else:
        lo, hi, margin = _bounds(m, s, n)
    significant = n >= 2 and _holds(m, s, n)
    needed = None if significant or n < 2 else seeds_needed(m, s)
    return {"mean_points": m, "std_points": s, "ci95_points": [lo, hi], "n": n,
            "margin_points": margin if math.isfinite(margin) else None,
            "significant": significant, "seeds_needed": needed}


def evidence(cmp: dict[str, Any]) -> str:
    """The parenthesis behind a finding: seeds, 95% interval, margin, and for a finding that
    is not conclusive, how many seeds it would take (from the observed paired sd)."""
    n, (lo, hi) = cmp["n"], cmp["ci95_points"]
    text = f"paired over {n} seeds; 95% interval {lo:+.1f} to {hi:+.1f} points"
    if n < 2:
        return f"{n} seed, no interval"
    margin = f"; the margin for other machines is ±{cmp['margin_points']:.1f}"
    if cmp["significant"]:
        return text + margin
    if n < MIN_SEEDS:
        text += f"; fewer than {MIN_SEEDS} seeds"
    else:
        text += margin
    needed = cmp.get("seeds_needed")
    if needed is None:
        return text + "; no practical number of seeds would settle a difference this small"
    return text + f"; about {needed} seeds would settle it if the mean and sd stay as they are"
