"""Date normalisation: human-written dates -> ISO ``YYYY-MM-DD`` (a seq2seq task).

Every input maps to exactly one date. The order of numeric fields is fixed by the
separator: ``/`` is month-first (``11/14/2023``, ``11/14/23``) unless it starts
with a four-digit year (``2023/11/14``); ``.`` is day-first (``14.11.2023``).
Two-digit years use the fixed window 1950..2049 (``50``..``99`` -> 19xx,
``00``..``49`` -> 20xx); that format is only drawn when the whole ``[start, end]``
range lies inside the window. English names come from this module's own tuples,
never from the locale.

Train and test use disjoint calendar days: a fixed integer hash of the day's
ordinal sends about 20% of all days to "test", whatever the range or seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, timedelta
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .._checks import check_positive_int

MONTHS = ("January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TWO_DIGIT_WINDOW = (1950, 2049)
TEST_FRACTION = 0.2
DATE_SPLITS = ("train", "test", "all")


def _ordinal_suffix(day: int) -> str:
    if 11 <= day % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _y(d: date) -> str:
    return f"{d.year:04d}"


_FORMATTERS: dict[str, Callable[[date], str]] = {
    "weekday_long": lambda d: f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {_y(d)}",
    "mdy_slash_short": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",
    "mon_d_y": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {_y(d)}",
    "d_mon_y": lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {_y(d)}",
    "cjk": lambda d: f"{_y(d)}年{d.month}月{d.day}日",
    "mdy_slash": lambda d: f"{d.month:02d}/{d.day:02d}/{_y(d)}",
    "dmy_dot": lambda d: f"{d.day:02d}.{d.month:02d}.{_y(d)}",
    "month_ordinal": lambda d: f"{MONTHS[d.month - 1]} {d.day}{_ordinal_suffix(d.day)}, {_y(d)}",
    "weekday_lower": lambda d: (
        f"{WEEKDAYS[d.weekday()].lower()} {d.day} {MONTHS[d.month - 1][:3].lower()} {_y(d)}"
    ),
    "ymd_slash": lambda d: f"{_y(d)}/{d.month:02d}/{d.day:02d}",
    "d_mon_y_upper": lambda d: f"{d.day:02d}-{MONTHS[d.month - 1][:3].upper()}-{_y(d)}",
    "weekday_short": lambda d: f"{WEEKDAYS[d.weekday()][:3]} {d.day} {MONTHS[d.month - 1]} {_y(d)}",
}
#: Names of all input formats, in the order used for sampling.
DATE_FORMATS: tuple[str, ...] = tuple(_FORMATTERS)
_TWO_DIGIT_FORMATS = frozenset({"mdy_slash_short"})


def format_date(d: date, fmt: str) -> str:
    """Render ``d`` in the input format named ``fmt`` (one of ``DATE_FORMATS``)."""
    if not isinstance(d, date):
        raise TypeError(f"d must be a datetime.date, got {type(d).__name__}")
    if fmt not in _FORMATTERS:
        raise ValueError(f"fmt must be one of {DATE_FORMATS}, got {fmt!r}")
    if fmt in _TWO_DIGIT_FORMATS and not TWO_DIGIT_WINDOW[0] <= d.year <= TWO_DIGIT_WINDOW[1]:
        raise ValueError(f"fmt {fmt!r} needs a year in {TWO_DIGIT_WINDOW}, got {d.year}")
    return _FORMATTERS[fmt](d)


def formats_for_range(start: date, end: date) -> tuple[str, ...]:
    """The formats ``make_dates`` draws from for ``[start, end]`` (all of
    ``DATE_FORMATS``, minus the two-digit-year ones if the range leaves 1950..2049)."""
    inside = TWO_DIGIT_WINDOW[0] <= start.year and end.year <= TWO_DIGIT_WINDOW[1]
    return tuple(f for f in DATE_FORMATS if inside or f not in _TWO_DIGIT_FORMATS)


def _is_test_day(ordinals: np.ndarray) -> np.ndarray:
    """Fixed splitmix64-style hash of day ordinals -> True for held-out days."""
    x = ordinals.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < TEST_FRACTION


def is_test_date(d: date) -> bool:
    """Whether calendar day ``d`` belongs to the held-out ("test") split."""
    return bool(_is_test_day(np.array([d.toordinal()]))[0])


def make_dates(
    n: int,
    *,
    seed: int = 0,
    start: date = date(1950, 1, 1),
    end: date = date(2049, 12, 31),
    split: str = "all",
) -> list[tuple[str, str]]:
    """``n`` (human-written date, ISO ``YYYY-MM-DD``) pairs.

    Days are uniform over the days of ``[start, end]`` (inclusive) that belong to
    ``split`` ("train", "test" or "all"; train and test are disjoint, see
    ``is_test_date``); the format is uniform over ``formats_for_range(start, end)``.
    Sampling is with replacement and deterministic given all arguments.

    Returns a list of ``n`` tuples ``(source, target)``.
    """
    n = check_positive_int("n", n)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, date):
            raise TypeError(f"{name} must be a datetime.date, got {type(value).__name__}")
    if start > end:
        raise ValueError(f"start must be on or before end, got start={start} > end={end}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, one of {DATE_SPLITS}, got {type(split).__name__}")
    if split not in DATE_SPLITS:
        raise ValueError(f"split must be one of {DATE_SPLITS}, got {split!r}")
    ordinals = np.arange(start.toordinal(), end.toordinal() + 1, dtype=np.int64)
    if split != "all":
        held_out = _is_test_day(ordinals)
        ordinals = ordinals[held_out if split == "test" else ~held_out]
    if len(ordinals) == 0:
        raise ValueError(f"start..end ({start}..{end}) contains no {split!r} days; widen it")
    formats = formats_for_range(start, end)
    rng = np.random.default_rng(seed)
    days = ordinals[rng.integers(0, len(ordinals), size=n)]
    fmts = rng.integers(0, len(formats), size=n)
    out = []
    for o, f in zip(days.tolist(), fmts.tolist()):
        d = date.fromordinal(o)
        out.append((_FORMATTERS[formats[f]](d), d.isoformat()))
    return out


class CharVocab:
    """Character vocabulary with specials pad=0, bos=1, eos=2, unk=3.

    Characters get ids 4, 5, ... in the order given (duplicates dropped).
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
    UNK_CHAR = "\ufffd"
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars: tuple[str, ...] = tuple(dict.fromkeys(chars))
        for c in self.chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars must be single characters, got {c!r}")
        self._index = {c: i + len(self.SPECIALS) for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.SPECIALS) + len(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({''.join(self.chars)!r})"

    def encode(self, s: str, add_bos: bool = False, add_eos: bool = True) -> list[int]:
        """Ids of the characters of ``s`` (unknown ones -> ``unk_id``), length
        ``len(s) + add_bos + add_eos``."""
        if not isinstance(s, str):
            raise TypeError(f"s must be a str, got {type(s).__name__}")
        ids = [self._index.get(c, self.unk_id) for c in s]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of ``ids`` (1-D): stops at the first eos, skips pad and bos,
        renders unk as U+FFFD."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            if i == self.unk_id:
                out.append(self.UNK_CHAR)
            elif len(self.SPECIALS) <= i < len(self):
                out.append(self.chars[i - len(self.SPECIALS)])
            else:
                raise ValueError(f"ids contains {i}, outside the vocabulary of size {len(self)}")
        return "".join(out)


def encode_batch(
    strings: Sequence[str],
    vocab: CharVocab,
    max_len: int | None = None,
    add_bos: bool = False,
    add_eos: bool = True,
) -> Tensor:
    """Encode and right-pad with ``vocab.pad_id`` into a LongTensor ``(N, T)``.

    ``T`` is ``max_len`` if given (a longer encoded string raises ValueError),
    else the longest encoded string.
    """
    if not isinstance(vocab, CharVocab):
        raise TypeError(f"vocab must be a CharVocab, got {type(vocab).__name__}")
    if isinstance(strings, str):
        raise TypeError("strings must be a sequence of str, got a single str")
    encoded = [vocab.encode(s, add_bos=add_bos, add_eos=add_eos) for s in strings]
    longest = max((len(e) for e in encoded), default=0)
    if max_len is None:
        width = longest
    else:
        width = check_positive_int("max_len", max_len)
        if longest > width:
            raise ValueError(
                f"max_len must be >= the longest encoded string ({longest}), got {width}"
            )
    out = torch.full((len(encoded), width), vocab.pad_id, dtype=torch.long)
    for row, e in enumerate(encoded):
        out[row, : len(e)] = torch.tensor(e, dtype=torch.long)
    return out


@lru_cache(maxsize=1)
def date_vocabularies() -> tuple[CharVocab, CharVocab]:
    """``(src_vocab, tgt_vocab)`` for the date task.

    The source vocabulary holds every character any format can produce (all
    formats rendered for every day of the leap year 2000, plus the ten digits),
    sorted by code point: fixed, and independent of any sampled data. The target
    vocabulary is ``0123456789-``.
    """
    chars = set("0123456789")
    d = date(2000, 1, 1)
    while d.year == 2000:
        for render in _FORMATTERS.values():
            chars.update(render(d))
        d += timedelta(days=1)
    return CharVocab(sorted(chars)), CharVocab("0123456789-")
