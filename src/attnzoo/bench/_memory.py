"""Peak-memory measurements, each in a fresh Python process.

The parent (`measure_in_subprocess`) starts ``sys.executable -c ...`` with a JSON
spec; the child (`child_main`) builds the module and inputs, warms up on a tiny
input (kernels, thread pool), then measures ONE call:

* CPU: the peak resident set growth, ``VmHWM`` after the call minus ``VmRSS`` just
  before it. The high-water mark is reset first (``/proc/self/clear_refs``), so the
  setup's own peak does not count; where that is impossible, ``ru_maxrss`` is used.
* CUDA: ``torch.cuda.max_memory_allocated()`` after the call minus the allocation
  before it (peak statistics reset first).

It prints one result line, ``ATTNZOO_BENCH_RESULT {json}``: ``peak_mb``, ``seconds``
(the call's duration) and ``method``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["measure_in_subprocess", "child_main", "MARKER"]

MARKER = "ATTNZOO_BENCH_RESULT "
_CHILD = "import sys; from attnzoo.bench._memory import child_main; child_main(sys.argv[1])"


def measure_in_subprocess(spec: dict[str, Any], timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; return its result dict or raise RuntimeError."""
    import torch

    spec = {"dtype": str(torch.get_default_dtype()).removeprefix("torch."), **spec}  # the run's dtype
    src = str(Path(__file__).resolve().parents[2])  # the directory holding the attnzoo package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=timeout_s,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    why = tail[-1].strip() if tail else f"exit status {proc.returncode}, no output"
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode} (out of memory?); {why}"
    raise RuntimeError(f"memory subprocess failed: {why}")


# ------------------------------------------------------------------------------ child
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _measure_cpu(call: Any) -> dict[str, Any]:
    import resource
    import time

    reset = _reset_peak()
    before = _status_kb("VmRSS")
    if before is None:  # no /proc: fall back to the running maximum (may overstate)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        reset = False
    t0 = time.perf_counter()
    call()
    seconds = time.perf_counter() - t0
    hwm = _status_kb("VmHWM") if reset else None
    method = "VmHWM-VmRSS"
    if hwm is None:
        hwm, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss-VmRSS"
    return {"peak_mb": max(0, hwm - before) / 1024, "seconds": seconds, "method": method}


def _measure_cuda(call: Any, device: Any) -> dict[str, Any]:
    import time

    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - before
    return {"peak_mb": peak / 2**20, "seconds": seconds, "method": "cuda.max_memory_allocated"}


def _mha_weights(spec: dict[str, Any], device: Any):
    """Eval forward with averaged weights: torch's module, or attnzoo's (optionally some rows)."""
    import torch
    from torch import nn

    from attnzoo.attention import MultiHeadAttention

    B, N, E, H = spec["B"], spec["N"], spec["E"], spec["H"]
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True, device=device).eval()
    mod = ref if spec["impl"] == "torch" else MultiHeadAttention.from_torch(ref).eval()
    kw: dict[str, Any] = {"need_weights": True}
    rows = spec.get("rows")
    if rows is not None:
        kw["weights_for"] = torch.linspace(0, N - 1, rows, device=device).long()

    def make(n: int):
        x = torch.randn(B, n, E, device=device)
        extra = dict(kw)
        if "weights_for" in extra:
            extra["weights_for"] = extra["weights_for"].clamp(max=n - 1)

        def call() -> None:
            with torch.inference_mode():
                mod(x, x, x, **extra)

        return call

    return make(8), make(N)


def _mha_long(spec: dict[str, Any], device: Any):
    """attnzoo self-attention forward + backward: no mask, causal, or key padding."""
    import torch

    from attnzoo.attention import MultiHeadAttention

    B, N, E, H, mask = spec["B"], spec["N"], spec["E"], spec["H"], spec["mask"]
    torch.manual_seed(0)
    mod = MultiHeadAttention(E, H, device=device)

    def make(n: int):
        x = torch.randn(B, n, E, device=device, requires_grad=True)
        g = torch.randn(B, n, E, device=device)
        kw: dict[str, Any] = {"is_causal": mask == "causal"}
        if mask == "padding":  # the last eighth of every sequence is padding
            kpm = torch.zeros(B, n, dtype=torch.bool, device=device)
            kpm[:, n - n // 8:] = True
            kw["key_padding_mask"] = kpm

        def call() -> None:
            out = mod(x, **kw)[0]
            out.backward(g)

        return call

    return make(16), make(N)


_OPS = {"mha_weights": _mha_weights, "mha_long": _mha_long}


def _op(name: str) -> Any:
    """A measured op: one of ``_OPS``, or ``"attnzoo.bench.<module>:<function>"`` for a case
    module whose dependencies this file does not import (e.g. transformers for ``cases_hf``)."""
    import importlib

    if name in _OPS:
        return _OPS[name]
    module, sep, attr = name.partition(":")
    if not sep or not module.startswith("attnzoo.bench."):
        raise ValueError(f"unknown memory op {name!r}; known: {sorted(_OPS)} or 'attnzoo.bench.<module>:<function>'")
    return getattr(importlib.import_module(module), attr)


def child_main(spec_json: str) -> None:
    """Entry point of the measuring subprocess (see the module docstring)."""
    import gc

    import torch

    spec = json.loads(spec_json)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    if spec.get("dtype"):
        torch.set_default_dtype(getattr(torch, spec["dtype"]))
    warm, call = _op(spec["op"])(spec, device)
    warm()  # minimal warm-up: load kernels and start threads on a tiny input
    gc.collect()
    result = _measure_cuda(call, device) if device.type == "cuda" else _measure_cpu(call)
    result["threads"] = torch.get_num_threads()
    print(MARKER + json.dumps(result), flush=True)
