"""``attnzoo bench``: attnzoo against the PyTorch equivalents, side by side, in one process.

Every comparison runs warm-up calls, then ``--repeats`` samples of attnzoo and of the
reference taken alternately (A B A B ...), and reports the medians. Peak-memory rows run
each measurement in its own fresh subprocess. The ratio column is "how many times better
attnzoo is": reference time / attnzoo time (reference MB / attnzoo MB for memory, attnzoo
GFLOP/s / matmul GFLOP/s for throughput); above 1 attnzoo wins. See docs/performance.md.

    python -m attnzoo.bench --quick
    attnzoo bench --json bench.json --only functional,mha_eval --repeats 20
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["add_arguments", "main", "main_from_args", "run_benchmarks", "SIZES", "group_names"]

#: Problem sizes per mode. ``--quick`` keeps every shape small and compiles one case; its run
#: time is then mostly that compile and the memory subprocesses' start-up (a minute or two).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "functional": [(8, 8, 512, 64), (2, 8, 2048, 64)],  # (B, H, N, head size)
        "mha_dims": (512, 8),  # (E, H)
        "mha": [(8, 512), (2, 2048)],  # (B, N)
        "weights": [(2, 64, 64, 4), (8, 512, 512, 8), (2, 2048, 512, 8)],  # (B, N, E, H)
        "weights_causal": [(1, 2048, 256, 8)],  # (B, N, E, H), is_causal=True
        "masked": {"B": 1, "N": [8192], "E": 512, "H": 8},
        "memory": {"B": 1, "N": 4096, "E": 512, "H": 8, "rows": 32},
        "long": {"B": 1, "N": 32768, "E": 512, "H": 8},
        "decode": {"tokens": [64, 512], "vocab": 64, "src_len": 32, "max_len": 520},
        "compile": {"B": 8, "N": 256, "E": 256, "H": 8, "C": 128, "HW": 28,
                    "cases": ["MultiHeadAttention self", "MultiHeadAttention cross+kpm", "SqueezeExcite",
                              "CBAM", "TransformerEncoderLayer"]},
        "gating": {"shape": (32, 256, 28), "tour_batch": 128, "tour_side": 32},
        "throughput": {"N": [1024, 2048], "B": 4, "H": 8, "hs": 64, "mm": 2048},
    },
    "quick": {
        "functional": [(2, 4, 128, 32), (1, 4, 256, 32)],
        "mha_dims": (64, 4),
        "mha": [(2, 64), (1, 256)],
        "weights": [(2, 64, 64, 4), (1, 256, 64, 4)],
        "weights_causal": [(1, 256, 64, 4)],
        "masked": {"B": 1, "N": [512], "E": 64, "H": 4},
        "memory": {"B": 1, "N": 1024, "E": 64, "H": 4, "rows": 32},
        "long": {"B": 1, "N": 4096, "E": 64, "H": 4},
        "decode": {"tokens": [8, 32], "vocab": 64, "src_len": 8, "max_len": 520},
        "compile": {"B": 2, "N": 32, "E": 32, "H": 4, "C": 16, "HW": 8,
                    "cases": ["MultiHeadAttention self"]},
        "gating": {"shape": (2, 32, 14), "tour_batch": 8, "tour_side": 32},
        "throughput": {"N": [128, 256], "B": 1, "H": 4, "hs": 32, "mm": 256},
    },
}

#: On CUDA (bfloat16 by default) the full sizes grow to the shapes of issue 10's table.
SIZES["cuda"] = {
    **SIZES["full"],
    "weights": [*SIZES["full"]["weights"], (1, 8192, 1024, 16)],
    "masked": {"B": 1, "N": [16384, 65536], "E": 512, "H": 8},
    "decode": {"tokens": [256], "vocab": 64, "src_len": 32, "max_len": 264, "B": 8, "d_model": 512, "nhead": 8,
               "layers": 6},
    "throughput": {"N": [4096, 16384], "B": 4, "H": 16, "hs": 64, "mm": 8192},
}

SCHEMA = "attnzoo-bench/1"
DESCRIPTION = "Time attnzoo against the PyTorch equivalents in one run and print ratios."
#: Default dtype per device type: what people train in there.
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}


#: The modules that register the groups, and their groups in run order. Listed here so
#: that building the parser imports nothing heavy, and one module failing to import only
#: turns its own groups into error rows.
_MODULES = {
    "cases_attention": ["functional", "mha_train", "mha_eval", "mha_weights", "masked", "memory", "long",
                        "throughput"],
    "cases_models": ["decode", "compile", "gating"],
    "cases_hf": ["hf"],
    "cases_masks": ["structured"],
    "cases_gates": ["gates"],
    "cases_positions": ["positions"],
}
_ORDER = ["functional", "mha_train", "mha_eval", "mha_weights", "masked", "memory", "long", "decode", "compile",
          "gating", "gates", "throughput", "hf", "structured", "positions"]


def group_names() -> list[str]:
    """Every group name, in run order."""
    return list(_ORDER)


def _registry() -> tuple[dict[str, Any], dict[str, str]]:
    """(registered groups, {group: why it is unavailable})."""
    import importlib

    from ._core import GROUPS

    missing = {}
    for module, names in _MODULES.items():
        try:
            importlib.import_module(f"{__name__}.{module}")
        except Exception as exc:
            missing.update({n: f"cannot import attnzoo.bench.{module}: {_one_line(exc)}" for n in names})
    return GROUPS, missing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` and make ``args.run`` the entry point."""
    parser.add_argument("--quick", action="store_true",
                        help="much smaller shapes, fewer repeats and one torch.compile case: a smoke test of every "
                             "group, not a measurement; about a minute or two on a laptop CPU (compiling that case and "
                             "starting the memory subprocesses take most of it)")
    parser.add_argument("--json", metavar="FILE", help="also write the machine and every row to FILE (atomically)")
    parser.add_argument("--only", metavar="GROUP[,GROUP]",
                        help="run only these groups (comma-separated); the groups are: " + ", ".join(_ORDER))
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="timed samples per side; the median is reported (default 10, 3 with --quick)")
    parser.add_argument("--warmup", type=int, metavar="N",
                        help="untimed calls per side first (default 2, 1 with --quick)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="cpu (default) or cuda[:i]: timing rows run there with synchronisation; "
                             "memory rows report CUDA peak allocation instead of RSS")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], metavar="DTYPE",
                        help="float32, bfloat16 or float16 for every tensor and module "
                             "(default: bfloat16 on cuda, float32 on cpu)")
    parser.set_defaults(run=main_from_args)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from .._errors import UsageError

    def count(name: str, default: int, low: int) -> int:
        value = getattr(args, name)
        if value is None:
            return default
        if value < low:
            raise UsageError(f"--{name} must be an integer >= {low}, got {value}")
        return value

    if args.json is not None:  # first, before any slow work
        check_json_path(args.json)
    known = group_names()
    groups = known
    if args.only is not None:
        groups = [g.strip().replace("-", "_") for g in args.only.split(",") if g.strip()]
        bad = [g for g in groups if g not in known]
        if bad or not groups:
            what = ", ".join(bad) or repr(args.only)
            raise UsageError(f"--only: unknown group {what}; choose from {', '.join(known)}")
        groups = [g for g in known if g in groups]  # run order, no duplicates
    import torch

    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device must be cpu or cuda[:i], got {args.device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda[:i], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: this torch build or machine has no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
    return {"quick": bool(args.quick), "repeats": count("repeats", 3 if args.quick else 10, 1),
            "warmup": count("warmup", 1 if args.quick else 2, 0), "groups": groups, "device": str(device),
            "dtype": getattr(args, "dtype", None) or DEFAULT_DTYPE[device.type], "json": args.json}


def _json_target(path: str) -> str:
    """The file ``--json PATH`` writes (symlinks followed)."""
    return os.path.realpath(os.path.expanduser(path))


def _is_bench_json(path: str) -> bool:
    from .._io import read_json

    data = read_json(path)
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("attnzoo-bench/")


def check_json_path(path: str) -> None:
    """``UsageError`` unless ``--json PATH`` can be written: its folder exists and takes a
    new file (tried), and PATH is new or an earlier ``attnzoo bench`` file (never a file of
    someone else's, which it would replace)."""
    from .._errors import UsageError

    target = _json_target(path)
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise UsageError(f"--json {path}: is a folder; give a file name")
    if not os.path.isdir(parent):
        raise UsageError(f"--json {path}: folder {parent} does not exist")
    if os.path.lexists(target) and not (os.path.isfile(target) and _is_bench_json(target)):
        raise UsageError(f"--json {path}: {target} exists and was not written by attnzoo bench; "
                         "choose a new file name (it would be replaced)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--json {path}: cannot write in {parent} ({exc.strerror or exc})") from None


#: Environment variables that change what the numbers mean, recorded when set.
_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TORCHINDUCTOR_CACHE_DIR")


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, cores, torch version and threads, and the device the timing rows use."""
    import torch

    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.lower().startswith("model name")), None)
    except OSError:
        pass
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count()
    info = {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "cores_available": available, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "device": device,
            "python": platform.python_version(), "platform": platform.platform(),
            "env": {k: os.environ[k] for k in _ENV if k in os.environ}}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def run_benchmarks(options: dict[str, Any], *, progress: Any = sys.stderr) -> dict[str, Any]:
    """Run the chosen groups; return the report (``machine``, ``rows``, ...). Never raises
    for a failing row: it becomes a row whose ``error`` says why."""
    import torch

    from .. import __version__
    from ._core import Context

    torch.set_num_threads(torch.get_num_threads())  # the machine's default, pinned and recorded
    registry, missing = _registry()
    device = torch.device(options["device"])
    mode = "quick" if options["quick"] else "cuda" if device.type == "cuda" else "full"
    ctx = Context(quick=options["quick"], repeats=options["repeats"], warmup=options["warmup"],
                  device=device, sizes=SIZES[mode], min_sample_s=0.005 if options["quick"] else 0.05)
    default_dtype = torch.get_default_dtype()
    # Every tensor and module the groups create takes this dtype (also in the memory subprocesses).
    torch.set_default_dtype(getattr(torch, options.get("dtype") or DEFAULT_DTYPE[device.type]))
    try:
        rows, group_s, start = _run_groups(options, registry, missing, ctx, progress)
    finally:
        torch.set_default_dtype(default_dtype)
    return {
        "schema": SCHEMA, "attnzoo": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)), "equivalent_command": _equivalent(options),
        "options": options,
        "machine": machine_info(options["device"]), "elapsed_s": time.perf_counter() - start,
        "group_elapsed_s": group_s,
        "rows": [r.to_json() for r in rows],
    }


def _run_groups(options: dict[str, Any], registry: dict[str, Any], missing: dict[str, str], ctx: Any,
                progress: Any) -> tuple[list[Any], dict[str, float], float]:
    from ._core import Row

    rows: list[Row] = []
    group_s: dict[str, float] = {}
    start = time.perf_counter()
    for name in options["groups"]:
        group_start = time.perf_counter()
        if name not in registry:
            rows.append(Row(name, "(group)", "", error=missing.get(name, "not registered")))
            continue
        _, fn = registry[name]
        try:
            for job in fn(ctx):
                if progress is not None:
                    print(f"bench: {name}: {job.operation} {job.shape}".rstrip(), file=progress, flush=True)
                try:
                    out = job.run()
                    rows.extend(out if isinstance(out, list) else [out])
                except Exception as exc:
                    rows.append(Row(name, job.operation, job.shape, error=_one_line(exc)))
        except Exception as exc:  # the group itself failed to set up
            rows.append(Row(name, "(group)", "", error=_one_line(exc)))
        group_s[name] = time.perf_counter() - group_start
    return rows, group_s, start


def _equivalent(options: dict[str, Any]) -> str:
    """``attnzoo bench ...`` with every option spelled out: reruns exactly this configuration."""
    argv = ["attnzoo", "bench", *(["--quick"] if options["quick"] else []), "--only", ",".join(options["groups"]),
            "--repeats", str(options["repeats"]), "--warmup", str(options["warmup"]), "--device", options["device"]]
    if options.get("dtype"):
        argv += ["--dtype", options["dtype"]]
    return shlex.join(argv + (["--json", options["json"]] if options.get("json") else []))


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:400]


def main_from_args(args: argparse.Namespace) -> int:
    """The ``run`` entry point set by `add_arguments` (bad values: ``UsageError``)."""
    from ._core import Row, format_table

    options = _options(args)
    report = run_benchmarks(options)
    fields = Row.__dataclass_fields__
    print(format_table([Row(**{k: v for k, v in r.items() if k in fields}) for r in report["rows"]]))
    m = report["machine"]
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    print(f"\n{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, device {m['device']}{gpu}, "
          f"dtype {options['dtype']}; medians of {options['repeats']} samples; ratio > 1: attnzoo better")
    if options["json"]:
        _write_json(options["json"], report)
    return 0


def _write_json(path: str, report: dict[str, Any]) -> None:
    """Write ``--json PATH`` at the end of the run, checked again: a file that appeared
    meanwhile, or an earlier bench file replaced by someone else's, is never replaced."""
    from pathlib import Path

    from .._errors import CommandError
    from .._io import write_json_owned

    target = Path(_json_target(path))
    try:  # checked before the run; the disk can still fill up
        written = write_json_owned(target, report, lambda p: _is_bench_json(str(p)))
    except OSError as exc:
        raise CommandError(f"--json {path}: cannot write ({exc.strerror or exc})") from None
    if written != target:
        raise CommandError(f"--json {path}: {target} appeared during the run and was not written by attnzoo "
                           f"bench; it was left as it is and the results were written to {written}")
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attnzoo.bench [options]``: same options and exit codes as ``attnzoo bench``."""
    from .._errors import OneLineParser, run_command

    def parser() -> argparse.ArgumentParser:
        made = OneLineParser(prog="attnzoo bench", description=DESCRIPTION)
        add_arguments(made)
        return made
    return run_command(parser, sys.argv[1:] if argv is None else argv, lambda args: "attnzoo bench")
