"""What the parts of the tour share: budgets, progress lines, timing (statistics: ``stats.py``)."""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import datetime, timezone
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

#: Every training run of the tour uses this many CPU threads. The models are tiny: on a
#: 2-core machine one thread is about as fast as two when the machine is idle and many
#: times faster when it is busy (OpenMP threads then wait for each other), and a fixed
#: count keeps float reductions, and so the numbers, identical from run to run.
NUM_THREADS = 1


@dataclass(frozen=True)
class VisionBudget:
    """Data and training budget of the cluttered-digits comparison (the same for every model)."""

    n_train: int
    n_test: int
    epochs: int
    n_seeds: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    widths: tuple[int, ...] = (16, 32, 64)
    reduction: int = 4
    n_overlay: int = 8


@dataclass(frozen=True)
class DatesBudget:
    """Data, model size and training budget of the date-normalisation Transformer."""

    n_train: int
    n_test: int
    epochs: int
    batch_size: int = 64
    lr: float = 2e-3
    d_model: int = 64
    nhead: int = 4
    layers: int = 2
    dim_feedforward: int = 128
    n_per_format: int = 40
    n_curve: int = 500


@dataclass(frozen=True)
class ResNetBudget:
    """The small ResNet with SE/CBAM inserted by ``add_attention``: data and training budget
    (the cluttered digits again, the same for every variant)."""

    n_train: int
    n_test: int
    epochs: int
    n_seeds: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    widths: tuple[int, ...] = (16, 32, 64)
    reduction: int = 4


@dataclass(frozen=True)
class GatesBudget:
    """The gate league: the small ResNet of ``resnet.py`` with every ``add_attention`` kind
    (gate defaults), same data and training as the ResNet part, more seeds; ``time_rounds``
    interleaved rounds of the CPU timing of one batch's forward and backward."""

    n_train: int
    n_test: int
    epochs: int
    n_seeds: int = 5
    batch_size: int = 32
    lr: float = 4e-3
    widths: tuple[int, ...] = (16, 32, 64)
    time_rounds: int = 15


@dataclass(frozen=True)
class SpeechBudget:
    """Speaker identification on Japanese Vowels (the official 270/370 split is fixed)."""

    epochs: int
    hidden: int = 64
    n_seeds: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    n_plot_per_speaker: int = 3


@dataclass(frozen=True)
class PositionsBudget:
    """Character-level language modelling on Tiny Shakespeare, one model per position scheme
    (the same model, data order and steps for every scheme). Evaluation at the training
    context times each of ``eval_multiples``, on ``n_windows`` windows whose last ``scored``
    predictions count."""

    steps: int
    n_seeds: int = 3
    batch_size: int = 16
    lr: float = 1e-2
    context: int = 128
    d_model: int = 64
    nhead: int = 4
    layers: int = 2
    eval_multiples: tuple[int, ...] = (1, 2, 4, 8)
    n_windows: int = 16
    scored: int = 128
    schemes: tuple[str, ...] = ("learned", "sinusoidal", "rope", "alibi", "nope")

    @property
    def eval_contexts(self) -> tuple[int, ...]:
        return tuple(self.context * m for m in self.eval_multiples)


FULL = {
    "vision": VisionBudget(n_train=2500, n_test=1000, epochs=8),
    "resnet": ResNetBudget(n_train=2000, n_test=1000, epochs=4, batch_size=32, lr=4e-3),
    "speech": SpeechBudget(epochs=30),
    "dates": DatesBudget(n_train=6400, n_test=1000, epochs=6),
    "positions": PositionsBudget(steps=140),
    "gates": GatesBudget(n_train=2000, n_test=1000, epochs=4, n_seeds=5),
}
#: A smoke run: every model clearly above chance in well under a minute of CPU (fewer
#: samples and seeds, one seed for the CNNs, batches of 64, higher learning rates); its
#: numbers are NOT the tour's findings.
QUICK = {
    "vision": VisionBudget(n_train=1536, n_test=300, epochs=4, lr=8e-3, batch_size=64, n_seeds=1, n_overlay=4),
    "resnet": ResNetBudget(n_train=1280, n_test=300, epochs=4, lr=8e-3, batch_size=64, n_seeds=1),
    "speech": SpeechBudget(epochs=6, hidden=32, lr=1e-2, n_plot_per_speaker=2),
    "dates": DatesBudget(n_train=2400, n_test=300, epochs=3, lr=5e-3, n_per_format=10, n_curve=100),
    "positions": PositionsBudget(steps=30, n_seeds=1, batch_size=8, lr=2e-2, context=64, scored=64, n_windows=2),
    "gates": GatesBudget(n_train=640, n_test=128, epochs=2, n_seeds=1, batch_size=64, lr=8e-3, time_rounds=3),
}


def run_info(seed: int, quick: bool, only: str | None, device: str) -> dict[str, Any]:
    """When, where and how the tour ran: date (UTC), the command (without ``--out``), the
    attnzoo version, the CPU, and the machine's load average when it started (a busy
    machine makes every timing of the report longer)."""
    from .. import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    command = "attnzoo demo" + (" --quick" if quick else "") + f" --seed {seed}" + \
        (f" --only {only}" if only else "") + (f" --device {device}" if device != "cpu" else "")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command,
            "attnzoo": __version__, "cpu": cpu, "cpu_count": os.cpu_count(), "os": platform.system(),
            "load_average_1min_at_start": load}


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar on stderr, drawn only when stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False,
                dynamic_ncols=True, unit="step", mininterval=0.5)


def say(line: str) -> None:
    """One progress line on stderr (between tqdm bars without breaking them)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the elapsed seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are honest (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mean_histories(histories: dict[str, list[dict[str, list[float]]]]) -> dict[str, dict[str, list[float]]]:
    """One curve per model: the mean over seeds of each epoch's loss and accuracy."""
    return {n: {k: [sum(v) / len(v) for v in zip(*(h[k] for h in hs))] for k in ("loss", "accuracy")}
            for n, hs in histories.items()}
