"""Convert the UCI Japanese Vowels ``.ts`` files into the compact file attnzoo ships.

    python tools/convert_japanese_vowels.py ../shared/data/japanese-vowels \
        src/attnzoo/data/japanese_vowels.npz

Input: ``JapaneseVowels_TRAIN.ts`` and ``JapaneseVowels_TEST.ts`` (sktime/aeon ``.ts``
format: after ``@data`` one utterance per line, 12 ``:``-separated dimensions, each a
comma-separated series of that utterance's frames, then ``:`` and the label 1..9).

Output (``np.savez_compressed``), for each split ``s`` in ("train", "test"):

* ``s_values``:  int32 (F, 12), every frame of every utterance, concatenated in file
  order, in units of 1e-6 (the text has at most 6 decimals, some
  in exponent form such as ``-8.3E-4``, so this is exact);
* ``s_lengths``: int16 (N,), frames per utterance (they sum to F);
* ``s_labels``:  int8 (N,), the speaker 0..8 (the file's label minus 1).

The parser refuses anything unexpected (ragged dimensions, more than 6 decimals,
missing values) rather than guessing.
"""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

N_DIMS = 12
SPLITS = {"train": "JapaneseVowels_TRAIN.ts", "test": "JapaneseVowels_TEST.ts"}


def _micro(token: str) -> int:
    """'-0.207383' -> -207383 and '-8.3E-4' -> -830, exactly (decimal, no float rounding)."""
    try:
        micro = Decimal(token).scaleb(6)
    except InvalidOperation:
        raise ValueError(f"not a number: {token!r}") from None
    if not micro.is_finite() or micro != micro.to_integral_value():
        raise ValueError(f"not a finite number with at most 6 decimals: {token!r}")
    return int(micro)


def parse_ts(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one ``.ts`` file: (values int32 (F, 12) in 1e-6, lengths (N,), labels 0..8 (N,))."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().lower() == "@data") + 1
    frames, lengths, labels = [], [], []
    for n, line in enumerate(lines[start:]):
        if not line.strip():
            continue
        *dims, label = line.strip().split(":")
        if len(dims) != N_DIMS:
            raise ValueError(f"utterance {n}: {len(dims)} dimensions, expected {N_DIMS}")
        series = [[_micro(t) for t in d.split(",")] for d in dims]
        if len({len(s) for s in series}) != 1:
            raise ValueError(f"utterance {n}: dimensions have different lengths")
        frames.append(np.array(series, dtype=np.int64).T)  # (T, 12)
        lengths.append(len(series[0]))
        labels.append(int(label) - 1)
    values = np.concatenate(frames)
    if np.abs(values).max() >= 2**31:
        raise ValueError("a value does not fit int32 micro-units")
    return values.astype(np.int32), np.array(lengths, dtype=np.int16), np.array(labels, dtype=np.int8)


def convert(source_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of the shipped file, keyed as described in the module docstring."""
    out = {}
    for split, name in SPLITS.items():
        values, lengths, labels = parse_ts((source_dir / name).read_text(encoding="ascii"))
        out.update({f"{split}_values": values, f"{split}_lengths": lengths, f"{split}_labels": labels})
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: convert_japanese_vowels.py SOURCE_DIR OUT.npz", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from attnzoo._io import atomic_path

    arrays = convert(Path(argv[0]))
    with atomic_path(argv[1]) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    for split in SPLITS:
        lengths = arrays[f"{split}_lengths"]
        print(f"{split}: {len(lengths)} utterances, {lengths.sum()} frames, lengths {lengths.min()}..{lengths.max()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
