"""``attnzoo demo``, the tour: train every mechanism on real data, measure what each buys,
and write a report. The parts are registered in ``parts.py`` (in run order):

* Vision (``vision.py``): the same small CNN with no attention, with SE and with CBAM on
  cluttered handwritten digits; accuracy over several seeds, parameters, seconds, and
  whether CBAM's spatial gate finds the digit.
* ResNet (``resnet.py``): SE and CBAM put into a small ResNet by ``add_attention``, one per
  block or after every conv; train and test accuracy (does "after every conv" overfit?).
* Speech (``speech.py``): speaker identification on Japanese Vowels with one GRU encoder and
  three heads (last state, masked mean, ``TemporalAttention``); where the attention looks.
* Dates (``dates.py``): an encoder-decoder Transformer that normalises human-written
  dates; exact match, character accuracy, and its cross- and self-attention maps.
* Positions (``positions.py``, model in ``charlm.py``): a character-level Transformer on
  Tiny Shakespeare with learned, sinusoidal, RoPE, ALiBi and no positions; bits per
  character at 1 to 8 times the training context.
* Gate league (``gates.py``, only with ``--only gates``): every gate ``add_attention``
  accepts, one per block of the same ResNet, 5 seeds paired with the plain network;
  accuracy, verdict, parameters, FLOPs and CPU time. The default tour leaves it out (it
  takes several times the tour's CPU budget) and its report shows the committed league
  (``league.py``, ``league.json``).
* Report (``report.py``): ``DIR/index.html`` (self-contained, figures as PNG files beside
  it) and ``DIR/results.json``, written last. With ``--only``, the other parts' keys are
  absent from ``results.json`` and their sections from the page.

Reproducible: ``stats.REPRODUCIBLE`` says exactly what (bit-identical numbers only on the
same machine type with the same torch build, ``--device cpu``). Every run uses one CPU
thread (``common.NUM_THREADS``) and deterministic algorithms. On CUDA a few kernels
(max-pool backward) have no deterministic version, so numbers can differ in the last
digits. Findings are worded so that they hold on other machines too (``stats.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_json, atomic_write_text
from .._errors import CommandError, UsageError
from . import parts as _parts
from .common import FULL, NUM_THREADS, QUICK, run_info
from .output import Staging
from ..viz.diagrams import diagram_section
from .report import html_page, summary
from .stats import REPRODUCIBLE

__all__ = ["add_arguments", "run_demo", "DEFAULT_OUT", "QUICK_OUT", "PARTS", "DESCRIPTION"]

DEFAULT_OUT = "attnzoo-report"
QUICK_OUT = "attnzoo-report-quick"  # a quick run never replaces a full report by default
PARTS = tuple(_parts.PARTS)
MAX_SEED = 2**31 - 1
DESCRIPTION = ("Train small models with and without attention on real data and measure what attention buys, "
               "in " + str(len(PARTS)) + " parts: " + "; ".join(f"{p.name}: {p.help}" for p in _parts.PARTS.values())
               + ". Writes DIR/index.html (with PNG figures beside it) and DIR/results.json. "
               + REPRODUCIBLE[0].upper() + REPRODUCIBLE[1:] + ".")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` and make it call `run_demo`."""
    parser.add_argument("--out", metavar="DIR", default=None,
                        help=f"folder for the report: DIR/index.html, its PNG figures and DIR/results.json "
                             f"(default: {DEFAULT_OUT}/, with --quick {QUICK_OUT}/). It is replaced as a whole at "
                             "the end, and only if it is new, empty or an earlier report (every file listed, "
                             "unchanged, in its attnzoo-manifest.json); anything else is refused before training. "
                             "A symlink is followed")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every part: small budgets, well under a minute of CPU instead of about "
                             "seven; the same files and keys, numbers that only show every model learns; for tests "
                             f"and a first look (written to {QUICK_OUT}/ unless --out is given)")
    parser.add_argument("--seed", metavar="N", type=_seed, default=0,
                        help="base random seed, an integer >= 0 (default: 0); repeated trainings use seeds "
                             "N, N+1, N+2 (fewer with --quick); " + REPRODUCIBLE)
    parser.add_argument("--only", choices=PARTS, metavar="{" + ",".join(PARTS) + "}",
                        help="run one part only: " + "; ".join(f"'{p.name}' ({p.help})" for p in _parts.PARTS.values())
                             + "; the other parts are left out of the report")
    parser.add_argument("--device", choices=("cpu", "cuda"), metavar="{cpu,cuda}", default="cpu",
                        help="where to train: 'cpu' (default; bit-reproducible only on the same machine type and "
                             "torch build) or 'cuda' (needs a GPU)")
    parser.set_defaults(run=run_demo)


def _check_dependencies() -> None:
    missing = [m for m in ("matplotlib", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"the tour needs {' and '.join(missing)}: pip install \"attnzoo[demo]\"")


def _device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is available to torch here; use --device cpu")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        return torch.device("cuda")
    return torch.device("cpu")


class _TorchSettings:
    """Set the tour's thread count and determinism flags; put the caller's back afterwards."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> _TorchSettings:
        self.saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled(),
                      torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        self.rng = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        self.rng.__enter__()
        self.warn = warnings.catch_warnings()
        self.warn.__enter__()
        warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
        torch.set_num_threads(NUM_THREADS)
        torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        return self

    def __exit__(self, *exc: object) -> None:
        threads, det, warn_only, bench, cudnn_det = self.saved
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, cudnn_det
        self.warn.__exit__(*exc)
        self.rng.__exit__(*exc)


def run_demo(args: argparse.Namespace) -> int:
    """Run the tour for parsed ``args``; return the exit status (0).

    Bad values (``--out`` included: see ``output.py``) raise ``UsageError`` before any
    training; an interruption (Ctrl-C, SIGTERM) removes everything this run wrote and
    re-raises; a report that cannot be put in place raises ``CommandError``.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    _check_dependencies()
    device = _device(args.device)
    parts = [args.only] if args.only else [p for p in PARTS if _parts.PARTS[p].in_tour]
    budgets = QUICK if args.quick else FULL
    staging = Staging(args.out or (QUICK_OUT if args.quick else DEFAULT_OUT))
    try:
        with _TorchSettings(device):
            results: dict[str, Any] = {
                "seed": args.seed, "quick": bool(args.quick), "only": args.only, "parts": parts,
                "environment": {"device": str(device), "torch": torch.__version__, "threads": NUM_THREADS,
                                "python": platform.python_version()},
            }
            results["environment"].update(run_info(args.seed, bool(args.quick), args.only, args.device))
            for part in parts:
                results[part] = _parts.PARTS[part].run(budgets[part], args.seed, device, staging.path)
        views = [results[p]["figures"].get("view") for p in parts if isinstance(results[p].get("figures"), dict)]
        results["views"] = [v for v in views if v]  # interactive pages, embedded by the report
        # the whole tour also draws each mechanism's data flow from its torch.fx trace
        diagrams = "" if args.only else diagram_section(staging.path)
        results["seconds"] = time.perf_counter() - start
        results["cpu_seconds"] = time.process_time() - start_cpu  # ~ seconds on an idle machine (1 thread)
        atomic_write_text(staging.path / "index.html", html_page(results, diagrams))
        atomic_write_json(staging.path / "results.json", results)
        out = staging.commit()  # writes attnzoo-manifest.json, then one rename
    except OSError as exc:  # disk full, folder removed under us ...: one line, nothing partial
        staging.discard()
        where = f" ({exc.filename})" if exc.filename else ""
        raise CommandError(f"cannot write the report: {exc.strerror or exc}{where}") from None
    except BaseException:
        staging.discard()
        raise
    print(summary(results, str(Path(out) / "index.html")), flush=True)
    return 0
