"""The benchmark machinery: rows, the group registry, interleaved timing, ratios, the table.

A *group* is a function ``fn(ctx) -> Iterable[Job]`` registered with `group`. A
`Job` names one comparison and holds a zero-argument ``run`` that measures it and
returns one `Row` or a list of them. The runner calls every job inside its own
``try``, so one failing row becomes an ``error: ...`` row and the run goes on.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "Row", "Job", "Context", "GROUPS", "group", "ratio", "compare", "measure",
    "format_value", "format_ratio", "format_table", "LOWER_IS_BETTER", "HIGHER_IS_BETTER",
]

#: Units where a smaller number is better: ratio = reference / attnzoo.
LOWER_IS_BETTER = frozenset({"s", "s/token", "MB"})
#: Units where a larger number is better (rates): ratio = attnzoo / reference.
HIGHER_IS_BETTER = frozenset({"GFLOP/s"})
#: Units that are a plain reading with no ratio (e.g. a share of a model's time).
UNITS = LOWER_IS_BETTER | HIGHER_IS_BETTER | {"%"}


@dataclass
class Row:
    """One line of the table and of the JSON ``rows`` list."""

    group: str
    operation: str
    shape: str
    unit: str = "s"
    attnzoo: float | None = None
    reference: float | None = None
    reference_name: str | None = None
    ratio: float | None = None
    note: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; known: {sorted(UNITS)}")
        self.attnzoo, self.reference = _finite(self.attnzoo), _finite(self.reference)
        if self.ratio is None and self.error is None:
            self.ratio = ratio(self.attnzoo, self.reference, self.unit)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = {k: _finite(v) if isinstance(v, float) else v for k, v in self.extra.items()}
        return d


@dataclass
class Job:
    """One comparison of a group: ``run()`` returns a Row or a list of Rows."""

    operation: str
    shape: str
    run: Callable[[], Row | list[Row]]


@dataclass
class Context:
    """What every group gets: sizes, repeat counts and the device."""

    quick: bool
    repeats: int
    warmup: int
    device: torch.device
    sizes: dict[str, Any]
    min_sample_s: float = 0.02  # calls are batched so one timing sample lasts at least this

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def compare(self, a: Callable[[], Any], b: Callable[[], Any], **kw: Any) -> tuple[float, float]:
        kw = {"repeats": self.repeats, "warmup": self.warmup, "min_sample_s": self.min_sample_s, **kw}
        return compare(a, b, sync=self.sync, **kw)

    def measure(self, a: Callable[[], Any], **kw: Any) -> float:
        kw = {"repeats": self.repeats, "warmup": self.warmup, "min_sample_s": self.min_sample_s, **kw}
        return measure(a, sync=self.sync, **kw)


GroupFn = Callable[[Context], Iterable[Job]]
#: name -> (description, function), in the order the table shows them.
GROUPS: dict[str, tuple[str, GroupFn]] = {}


def group(name: str, description: str) -> Callable[[GroupFn], GroupFn]:
    """Register ``fn(ctx) -> Iterable[Job]`` as benchmark group ``name``."""

    def register(fn: GroupFn) -> GroupFn:
        if name in GROUPS:
            raise ValueError(f"benchmark group {name!r} is registered twice")
        GROUPS[name] = (description, fn)
        return fn

    return register


# --------------------------------------------------------------------------------- math
def ratio(attnzoo: float | None, reference: float | None, unit: str = "s") -> float | None:
    """How many times better attnzoo is than the reference (> 1: attnzoo is better).

    Times and memory (lower is better): ``reference / attnzoo``. Rates such as GFLOP/s
    (higher is better): ``attnzoo / reference``. None when either is missing or zero,
    or for units with no ratio (``%``).
    """
    attnzoo, reference = _finite(attnzoo), _finite(reference)
    if attnzoo is None or reference is None or unit not in LOWER_IS_BETTER | HIGHER_IS_BETTER:
        return None
    num, den = (reference, attnzoo) if unit in LOWER_IS_BETTER else (attnzoo, reference)
    return None if den <= 0 or num < 0 else num / den


def _finite(x: Any) -> Any:
    """NaN/inf -> None (the JSON writer rejects them); other values unchanged."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------------------ timing
def _sample(fn: Callable[[], Any], number: int, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - t0) / number


def _calls_per_sample(fn: Callable[[], Any], sync: Callable[[], None], min_sample_s: float) -> int:
    if min_sample_s <= 0:  # slow calls: one per sample, no calibration call
        return 1
    once = _sample(fn, 1, sync)
    return max(1, min(10_000, math.ceil(min_sample_s / max(once, 1e-9))))


def compare(
    a: Callable[[], Any], b: Callable[[], Any], *, repeats: int, warmup: int,
    sync: Callable[[], None] = lambda: None, min_sample_s: float = 0.02,
) -> tuple[float, float]:
    """Median seconds per call of ``a`` and ``b``, sampled alternately (A B A B ...).

    ``warmup`` untimed calls of each first; each sample repeats a call enough times to
    last ``min_sample_s`` (fast operations), so timer resolution does not dominate.
    Alternating the samples spreads slow drifts (frequency, other load) over both.
    """
    for _ in range(warmup):
        a()
        b()
    na, nb = _calls_per_sample(a, sync, min_sample_s), _calls_per_sample(b, sync, min_sample_s)
    ta, tb = [], []
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(max(1, repeats)):
            ta.append(_sample(a, na, sync))
            tb.append(_sample(b, nb, sync))
    finally:
        if enabled:
            gc.enable()
    return statistics.median(ta), statistics.median(tb)


def measure(
    a: Callable[[], Any], *, repeats: int, warmup: int, sync: Callable[[], None] = lambda: None,
    min_sample_s: float = 0.02,
) -> float:
    """Median seconds per call of ``a`` alone (rows with no reference)."""
    return compare(a, lambda: None, repeats=repeats, warmup=warmup, sync=sync, min_sample_s=min_sample_s)[0]


# ------------------------------------------------------------------------------- table
_TIME_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"))


def format_value(value: float | None, unit: str) -> str:
    """A cell: seconds scaled to s/ms/us, other units as ``12.3 MB``; None -> ``-``."""
    if value is None:
        return "-"
    if unit in ("s", "s/token"):
        suffix = "/token" if unit == "s/token" else ""
        scale, name = next(((sc, n) for sc, n in _TIME_UNITS if abs(value) >= sc), _TIME_UNITS[-1])
        x = value / scale
        return f"{x:.3g} {name}{suffix}" if abs(x) < 1000 else f"{x:.0f} {name}{suffix}"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:.1f} {unit}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


HEADER = ("group", "operation", "shape", "attnzoo", "reference", "ratio")


def format_table(rows: Iterable[Row]) -> str:
    """The table: one line per row, aligned columns, numbered notes underneath.

    An error row shows ``error: ...`` in place of its numbers; notes get ``[n]`` after
    the operation and are listed below the table (identical notes share a number).
    """
    lines: list[tuple[str, ...]] = []
    notes: list[str] = []
    for r in rows:
        op = r.operation
        if r.note:  # identical notes share one number
            if r.note not in notes:
                notes.append(r.note)
            op = f"{op} [{notes.index(r.note) + 1}]"
        if r.error is not None:
            lines.append((r.group, op, r.shape, f"error: {r.error}"))
        else:
            lines.append((r.group, op, r.shape, format_value(r.attnzoo, r.unit),
                          format_value(r.reference, r.unit), format_ratio(r.ratio)))
    full = [HEADER] + [line for line in lines if len(line) == len(HEADER)]
    widths = [max(len(line[i]) for line in full) for i in range(len(HEADER))]
    right = {3, 4, 5}  # numbers are right-aligned

    def render(line: tuple[str, ...]) -> str:
        cells = []
        for i, cell in enumerate(line):
            last = i == len(line) - 1 and len(line) < len(HEADER)
            cells.append(cell if last else cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(cells).rstrip()

    out = [render(HEADER), "  ".join("-" * w for w in widths)]
    out += [render(line) for line in lines]
    if notes:
        out.append("")
        out += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(out)
