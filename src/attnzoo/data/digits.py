"""Real handwritten digits and a cluttered-canvas task built from them.

``load_digits`` reads the 1,797 8x8 UCI digits shipped with the package (see
``ATTRIBUTION.md``). ``make_cluttered_digits`` places one digit at a random
position on a larger canvas among fragments of other digits, so that a model has
to find *where* the digit is before it can say *which* digit it is.
"""

from __future__ import annotations

import gzip
import io
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._checks import check_positive_int

N_DIGITS = 1797
N_CLASSES = 10
MAX_PIXEL = 16
TEST_FRACTION = 0.2
#: Seed of the fixed train/test partition of the source images. It is a constant,
#: independent of any ``seed`` argument, so every call agrees on the partition.
SPLIT_SEED = 80_1998
SPLITS = ("train", "test")


@lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    blob = resources.files(__package__).joinpath("digits.csv.gz").read_bytes()
    table = np.loadtxt(io.StringIO(gzip.decompress(blob).decode("ascii")), delimiter=",")
    if table.shape != (N_DIGITS, 65):
        raise RuntimeError(f"digits.csv.gz is corrupt: table shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > MAX_PIXEL or set(np.unique(labels)) != set(range(10)):
        raise RuntimeError("digits.csv.gz is corrupt: values out of range")
    images = pixels.astype(np.uint8).reshape(N_DIGITS, 8, 8)
    images.setflags(write=False)
    labels_i = labels.astype(np.int64)
    labels_i.setflags(write=False)
    return images, labels_i


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI handwritten digits (parsed once, then cached).

    Returns:
        images: ``uint8`` array ``(1797, 8, 8)`` with values in 0..16.
        labels: ``int64`` array ``(1797,)`` with values in 0..9.

    Fresh copies are returned, so callers may modify them freely.
    """
    images, labels = _load_raw()
    return images.copy(), labels.copy()


def _check_split(split: object) -> str:
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, one of {SPLITS}, got {type(split).__name__}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


@lru_cache(maxsize=2)
def _split_indices(split: str) -> np.ndarray:
    _, labels = _load_raw()
    rng = np.random.default_rng(SPLIT_SEED)
    test: list[np.ndarray] = []
    for c in range(N_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: int(round(TEST_FRACTION * len(members)))])
    is_test = np.zeros(N_DIGITS, dtype=bool)
    is_test[np.concatenate(test)] = True
    out = np.flatnonzero(is_test if split == "test" else ~is_test)
    out.setflags(write=False)
    return out


def digit_split(split: str) -> np.ndarray:
    """Indices into ``load_digits()`` of the source images of ``split``.

    A fixed, stratified 80/20 partition (per class, seeded by the constant
    ``SPLIT_SEED``): "train" has 1,438 images, "test" 359, and they are
    disjoint. Returns a sorted ``int64`` array ``(k,)``.
    """
    return _split_indices(_check_split(split)).copy()


class ClutteredDigits(NamedTuple):
    """A batch of cluttered-digit samples (``n`` samples, canvas side ``C``).

    images:           float32 ``(n, 1, C, C)`` in [0, 1].
    labels:           int64 ``(n,)``, the class 0..9 of the true digit.
    boxes:            int64 ``(n, 4)`` = (top, left, bottom, right) of the placed
                      digit patch; bottom/right are exclusive.
    sources:          int64 ``(n,)``, index into ``load_digits()`` of the digit.
    fragment_sources: int64 ``(n, n_fragments)``, index of each fragment's image.
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor
    sources: Tensor
    fragment_sources: Tensor


@lru_cache(maxsize=8)
def _fragment_table(split: str, scale: int, size: int) -> tuple[np.ndarray, ...]:
    """Upscaled source images of ``split`` and, per image, every crop corner
    whose ``size x size`` crop contains ink (CSR layout: offsets + positions)."""
    images, _ = _load_raw()
    pool = images[_split_indices(split)]
    up = pool.repeat(scale, axis=1).repeat(scale, axis=2)
    windows = np.lib.stride_tricks.sliding_window_view(up, (size, size), axis=(1, 2))
    ink = windows.sum(axis=(-1, -2), dtype=np.int64).reshape(len(up), -1) > 0
    counts = ink.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    positions = np.nonzero(ink)[1]  # row-major, so grouped per image in order
    return up, counts, offsets, positions


def make_cluttered_digits(
    n: int,
    *,
    canvas: int = 32,
    n_fragments: int = 4,
    fragment_size: int = 4,
    split: str = "train",
    seed: int = 0,
    scale: int = 2,
) -> ClutteredDigits:
    """``n`` canvases, each holding one real digit among fragments of other digits.

    Every sample takes a digit from the ``split``'s source images (train and test
    use disjoint source images, see ``digit_split``), upscales it ``scale`` times
    with nearest neighbour (default 2: an 8x8 digit becomes 16x16, so a 4x4
    fragment is a stroke piece rather than half a digit, the proportions of the
    cluttered-MNIST task) and puts it at a uniformly random position on a zeroed
    ``canvas x canvas`` image. Then ``n_fragments`` crops of ``fragment_size``
    squared, taken from *other* source images of the same split (upscaled the same
    way; only crops that contain ink) are put at uniformly random positions.
    Overlaps combine with max. Pixels are divided by 16 to lie in [0, 1].

    Deterministic in all arguments; uses only ``numpy.random.default_rng(seed)``.

    Returns:
        ``ClutteredDigits`` with images ``(n, 1, canvas, canvas)`` float32,
        labels ``(n,)``, boxes ``(n, 4)``, sources ``(n,)`` and fragment_sources
        ``(n, n_fragments)``, all int64 except images.
    """
    n = check_positive_int("n", n)
    scale = check_positive_int("scale", scale)
    side = 8 * scale
    canvas = check_positive_int("canvas", canvas)
    if canvas < side:
        raise ValueError(
            f"canvas must be at least the digit size {side} (8 * scale={scale}), got {canvas}"
        )
    if isinstance(n_fragments, bool) or not isinstance(n_fragments, int):
        raise TypeError(f"n_fragments must be an int >= 0, got {type(n_fragments).__name__}")
    if n_fragments < 0:
        raise ValueError(f"n_fragments must be an int >= 0, got {n_fragments}")
    fragment_size = check_positive_int("fragment_size", fragment_size)
    if fragment_size > side:
        raise ValueError(
            f"fragment_size must be at most the digit size {side}, got {fragment_size}"
        )
    split = _check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")

    up, counts, offsets, positions = _fragment_table(split, scale, fragment_size)
    pool_idx = _split_indices(split)
    _, all_labels = _load_raw()
    rng = np.random.default_rng(seed)
    k = n_fragments

    main = rng.integers(0, len(up), size=n)
    top = rng.integers(0, canvas - side + 1, size=n)
    left = rng.integers(0, canvas - side + 1, size=n)
    # Fragments: draw from the pool minus the main digit (shift indices >= main).
    frag = rng.integers(0, len(up) - 1, size=(n, k))
    frag += frag >= main[:, None]
    pick = np.floor(rng.random((n, k)) * counts[frag]).astype(np.int64)
    corner = positions[offsets[frag] + pick]
    span = side - fragment_size + 1
    crop_r, crop_c = corner // span, corner % span
    f_top = rng.integers(0, canvas - fragment_size + 1, size=(n, k))
    f_left = rng.integers(0, canvas - fragment_size + 1, size=(n, k))

    out = np.zeros((n, canvas, canvas), dtype=np.uint8)
    rows = np.arange(n)[:, None, None]
    ar = np.arange(side)
    out[rows, (top[:, None] + ar)[:, :, None], (left[:, None] + ar)[:, None, :]] = up[main]
    af = np.arange(fragment_size)
    for j in range(k):  # one fragment per sample at a time: no write conflicts
        src_r = (crop_r[:, j, None] + af)[:, :, None]
        src_c = (crop_c[:, j, None] + af)[:, None, :]
        patch = up[frag[:, j, None, None], src_r, src_c]
        dst_r = (f_top[:, j, None] + af)[:, :, None]
        dst_c = (f_left[:, j, None] + af)[:, None, :]
        out[rows, dst_r, dst_c] = np.maximum(out[rows, dst_r, dst_c], patch)

    images = torch.from_numpy(out).unsqueeze(1).to(torch.float32).div_(MAX_PIXEL)
    boxes = np.stack([top, left, top + side, left + side], axis=1)
    return ClutteredDigits(
        images=images,
        labels=torch.from_numpy(all_labels[pool_idx[main]].copy()),
        boxes=torch.from_numpy(boxes.astype(np.int64)),
        sources=torch.from_numpy(pool_idx[main].astype(np.int64)),
        fragment_sources=torch.from_numpy(pool_idx[frag].astype(np.int64).reshape(n, k)),
    )
