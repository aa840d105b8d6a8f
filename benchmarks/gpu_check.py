#!/usr/bin/env python3
"""Every row of issue 10's GPU table, with ratios, then the CUDA tests: one script, < 4 min on an H100.

    python benchmarks/gpu_check.py                       # cuda: the table, then pytest tests/test_cuda.py
    python benchmarks/gpu_check.py --json gpu.json       # also write the rows (atomically)
    python benchmarks/gpu_check.py --device cpu --tiny   # smoke run of the same code on tiny shapes

Each row times attnzoo and its reference alternately (A B A B ...) with CUDA
synchronisation and reports medians; ratio = reference time / attnzoo time (above 1,
attnzoo is faster), except the masked rows, whose reference is the same module on causal
attention alone (the goal there: ratio >= 1/1.3). Dtypes as in the issue: the first two
weights rows in float32, everything else in bfloat16 (float32 with ``--device cpu``).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from attnzoo import MultiHeadAttention, Seq2SeqTransformer  # noqa: E402
from attnzoo._decode_graph import graph_blocker  # noqa: E402
from attnzoo.bench._core import compare  # noqa: E402

Row = dict[str, Any]


def _shrink(n: int, tiny: bool, to: int) -> int:
    return max(to, n // 64) if tiny else n


class Check:
    """Shapes, device, dtype and timing settings shared by the rows."""

    def __init__(self, device: torch.device, tiny: bool, repeats: int) -> None:
        self.device, self.tiny, self.repeats = device, tiny, repeats
        self.half = torch.bfloat16 if device.type == "cuda" else torch.float32

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def compare(self, a: Callable[[], Any], b: Callable[[], Any], slow: bool = False) -> tuple[float, float]:
        quick = slow or self.tiny  # one call per sample
        return compare(a, b, repeats=self.repeats, warmup=1 if quick else 2, sync=self.sync,
                       min_sample_s=0.0 if quick else 0.02)

    def peak_mb(self, fn: Callable[[], Any]) -> float | None:
        if self.device.type != "cuda":
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        fn()
        self.sync()
        return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20


def weights_row(c: Check, B: int, N: int, E: int, H: int, dtype: torch.dtype) -> Row:
    N = _shrink(N, c.tiny, 32)
    E, H = (min(E, 32), min(H, 4)) if c.tiny else (E, H)
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True, device=c.device, dtype=dtype).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(B, N, E, device=c.device, dtype=dtype)

    def call(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return m(x, x, x, need_weights=True)
        return run

    w1, w2 = call(ours)()[1], call(ref)()[1]
    a, r = c.compare(call(ours), call(ref))
    row = {"path": "MHA eval, need_weights=True (averaged)", "shape": f"B{B} N{N} E{E} H{H}",
           "dtype": str(dtype).removeprefix("torch."), "attnzoo_s": a, "reference_s": r, "ratio": r / a,
           "reference": "torch.nn.MultiheadAttention", "max_abs_diff": (w1.float() - w2.float()).abs().max().item()}
    if N >= _shrink(4096, c.tiny, 32):
        mem_a, mem_r = c.peak_mb(call(ours)), c.peak_mb(call(ref))
        row.update(attnzoo_mb=mem_a, reference_mb=mem_r, memory_ratio=None if not mem_a else mem_r / mem_a)
    return row


def masked_row(c: Check, N: int) -> Row:
    N = _shrink(N, c.tiny, 64)
    B, E, H = 1, 512 if not c.tiny else 32, 8 if not c.tiny else 2
    torch.manual_seed(0)
    m = MultiHeadAttention(E, H, device=c.device, dtype=c.half)
    x = torch.randn(B, N, E, device=c.device, dtype=c.half, requires_grad=True)
    g = torch.randn(B, N, E, device=c.device, dtype=c.half)
    kpm = torch.zeros(B, N, dtype=torch.bool, device=c.device)
    kpm[:, N - N // 8:] = True

    def step(**kw: Any) -> Callable[[], None]:
        def run() -> None:
            m.zero_grad(set_to_none=True)
            x.grad = None
            m(x, is_causal=True, **kw)[0].backward(g)
        return run

    a, r = c.compare(step(key_padding_mask=kpm), step(), slow=N >= 16384)
    return {"path": "MHA fwd+bwd, causal + key padding (last 1/8)", "shape": f"B{B} N{N} E{E} H{H}",
            "dtype": str(c.half).removeprefix("torch."), "attnzoo_s": a, "reference_s": r, "ratio": r / a,
            "reference": "the same module, causal alone", "goal": "ratio >= 1/1.3 = 0.77"}


def decode_row(c: Check) -> Row:
    B, n, d, layers = (8, 256, 512, 6) if not c.tiny else (2, 8, 32, 1)
    torch.manual_seed(0)
    m = Seq2SeqTransformer(64, 64, d_model=d, nhead=8 if not c.tiny else 2, num_encoder_layers=layers,
                           num_decoder_layers=layers, dim_feedforward=4 * d, max_len=max(n + 8, 40)).to(c.device, c.half)
    with torch.no_grad():
        m.lm_head.bias[63] = -1e4  # eos never wins: every call generates n tokens
    src = torch.randint(2, 63, (B, 32), device=c.device)

    def gen(cache: bool) -> Callable[[], Any]:
        return lambda: m.generate(src, n, 1, 63, use_cache=cache)

    cached, uncached = gen(True)(), gen(False)()
    same = torch.equal(cached, uncached)
    a, r = c.compare(gen(True), gen(False), slow=True)
    graphed = graph_blocker(m, c.device) is None
    with torch.no_grad():  # the same model in float32: tokens must be identical there
        m.float()
        n32 = min(n, 64)
        same32 = torch.equal(m.generate(src, n32, 1, 63), m.generate(src, n32, 1, 63, use_cache=False))
    return {"path": f"Seq2SeqTransformer.generate, {layers}+{layers} layers, d{d}", "shape": f"B{B} {n} tokens",
            "dtype": str(c.half).removeprefix("torch."), "attnzoo_s": a / n, "reference_s": r / n, "ratio": r / a,
            "reference": "use_cache=False (recompute)", "same_tokens": same,
            "tokens_agree": (cached == uncached).float().mean().item(),
            "same_tokens_float32": same32, "float32_tokens": n32, "cuda_graph": graphed,
            "goal": ">= 5x and <= 1.0 ms/token"}


def profile(c: Check, path: str) -> None:
    """torch.profiler tables (CPU and CUDA time per op) of the CPU-bound GPU calls, to ``path``;
    prints each call's host time and its synchronisations."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    cases: list[tuple[str, Callable[[], Any]]] = []
    for B, N, E, H in ((2, 64, 64, 4), (8, 512, 512, 8)):
        ref = nn.MultiheadAttention(E, H, batch_first=True, device=c.device, dtype=c.half).eval()
        ours = MultiHeadAttention.from_torch(ref).eval()
        x = torch.randn(B, N, E, device=c.device, dtype=c.half)
        for name, m in (("attnzoo", ours), ("torch", ref)):
            cases.append((f"{name} weights B{B} N{N}", lambda m=m, x=x: m(x, x, x, need_weights=True)))
            cases.append((f"{name} eval B{B} N{N}", lambda m=m, x=x: m(x, x, x, need_weights=False)))
    q = torch.randn(8, 8, 512, 64, device=c.device, dtype=c.half)
    from attnzoo.functional import scaled_dot_product_attention
    cases.append(("attnzoo sdpa B8 H8 N512", lambda: scaled_dot_product_attention(q, q, q)))
    cases.append(("torch sdpa B8 H8 N512", lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if c.device.type == "cuda" else [])
    f = io.StringIO()  # written atomically at the end
    f.write(PROFILE_HEADER)
    for name, fn in cases:
        with torch.inference_mode():
            for _ in range(20):
                fn()
            c.sync()
            t0 = time.perf_counter()
            for _ in range(50):
                fn()
            c.sync()
            wall = (time.perf_counter() - t0) / 50
            with torch_profile(activities=activities) as prof:
                for _ in range(20):
                    fn()
                c.sync()
        avg = prof.key_averages()
        syncs = sum(e.count for e in avg if "Synchronize" in e.key or "Memcpy" in e.key or "item" in e.key)
        print(f"  profile {name}: {wall * 1e6:.0f} us/call, {syncs / 20:.1f} syncs/copies per call", flush=True)
        f.write(f"=== {name}: {wall * 1e6:.1f} us/call\n")
        f.write(avg.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60) + "\n")
    if c.device.type == "cuda":  # one graphed decoding step: its kernels
        torch.manual_seed(0)
        m = Seq2SeqTransformer(64, 64, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                               dim_feedforward=2048, max_len=40).to(c.device, c.half)
        src = torch.randint(2, 63, (8, 32), device=c.device)
        m.generate(src, 8, 1, 63)
        with torch_profile(activities=activities) as prof:
            m.generate(src, 8, 1, 63)
            c.sync()
        f.write("=== generate 8 tokens (graphed steps)\n")
        f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=60))
    from attnzoo._io import atomic_write_text

    atomic_write_text(path, f.getvalue())


def rows(c: Check) -> list[Callable[[], Row]]:
    return [
        lambda: weights_row(c, 8, 512, 512, 8, torch.float32),
        lambda: weights_row(c, 2, 2048, 512, 8, torch.float32),
        lambda: weights_row(c, 1, 8192, 1024, 16, c.half),
        lambda: masked_row(c, 16384),
        lambda: masked_row(c, 65536),
        lambda: decode_row(c),
    ]


def variants(c: Check) -> None:
    """The weights rows on the routes the current ones replaced, printed as one line each:
    without the Triton kernels, and (float32) with the output on the fused kernel."""
    import attnzoo._weights as AW
    from attnzoo.functional import fused_output

    def show(label: str, row: Row) -> None:
        print(f"  {label}: {row['shape']} {row['dtype']}: {_fmt_s(row['attnzoo_s'])} vs "
              f"{_fmt_s(row['reference_s'])}, ratio {row['ratio']:.2f}", flush=True)

    saved = AW._kernels_serve
    AW._kernels_serve = lambda *a: False
    try:
        for B, N, E, H, dtype in ((8, 512, 512, 8, torch.float32), (2, 2048, 512, 8, torch.float32),
                                  (1, 8192, 1024, 16, c.half)):
            show("without the kernels", weights_row(c, B, N, E, H, dtype))
    finally:
        AW._kernels_serve = saved
    for B, N, E, H in ((8, 512, 512, 8), (2, 2048, 512, 8)):  # the route before the one-pass output
        with fused_output():
            row = weights_row(c, B, N, E, H, torch.float32)
        show("output on the fused kernel, weights in a second pass", row)


def _fmt_s(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3g} ms"


SCHEMA = "attnzoo-gpu-check/1"
PROFILE_HEADER = "# benchmarks/gpu_check.py --profile\n"


def _is_our_json(path: str) -> bool:
    """An earlier --json file of this script (those before the schema field have its keys)."""
    from attnzoo._io import read_json

    data = read_json(path)
    return isinstance(data, dict) and (data.get("schema") == SCHEMA or {"device", "torch", "tiny", "rows"} <= set(data))


def _is_our_profile(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline() == PROFILE_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: checks that the script runs, measures nothing")
    p.add_argument("--repeats", type=int, default=None, help="samples per side (default 7, 2 with --tiny)")
    p.add_argument("--no-tests", action="store_true", help="skip pytest tests/test_cuda.py")
    p.add_argument("--json", metavar="FILE", help="also write the rows and the device to FILE")
    p.add_argument("--profile", metavar="FILE", help="also write torch.profiler tables of small calls to FILE")
    p.add_argument("--variants", action="store_true",
                   help="also time the weights rows without the Triton weights kernels, and the float32 "
                        "ones with the output on the fused kernel (the route before the one-pass output)")
    args = p.parse_args(argv)
    for opt, path, ours in (("--json", args.json, _is_our_json), ("--profile", args.profile, _is_our_profile)):
        if path and os.path.lexists(path) and not (os.path.isfile(path) and ours(path)):
            print(f"gpu_check: error: {opt} {path} exists and was not written by gpu_check; "
                  "choose a new file name (it would be replaced)", file=sys.stderr)
            return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device (use --device cpu --tiny for a smoke run)", file=sys.stderr)
        return 2
    c = Check(device, args.tiny, args.repeats or (2 if args.tiny else 7))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}; ratio = reference time / attnzoo time (> 1: attnzoo faster)")
    out, start = [], time.perf_counter()
    for make in rows(c):
        t0 = time.perf_counter()
        try:
            row = make()
        except Exception as exc:  # one failing row does not stop the others
            row = {"path": "error", "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
        row["wall_s"] = time.perf_counter() - t0
        out.append(row)
        if "error" in row:
            print(f"  error: {row['error']}", flush=True)
            continue
        mem = "" if row.get("attnzoo_mb") is None else (
            f"  memory {row['attnzoo_mb']:.0f} vs {row['reference_mb']:.0f} MiB ({row['memory_ratio']:.1f}x less)")
        extra = "" if "same_tokens" not in row else (
            f"  same tokens: {row['same_tokens']} ({row['tokens_agree']:.1%} agree); float32, "
            f"{row['float32_tokens']} tokens: {row['same_tokens_float32']}; CUDA graph: {row['cuda_graph']}")
        print(f"| {row['path']} | {row['shape']} | {row['dtype']} | {_fmt_s(row['attnzoo_s'])} | "
              f"{_fmt_s(row['reference_s'])} ({row['reference']}) | {row['ratio']:.2f} |{mem}{extra}", flush=True)
    print(f"table: {time.perf_counter() - start:.0f} s")
    if args.variants:
        variants(c)
    if args.profile:
        try:
            profile(c, args.profile)
        except Exception as exc:  # diagnostics only: never fail the check
            print(f"  profile error: {type(exc).__name__}: {exc}")
    if args.json:
        from attnzoo._io import atomic_write_json

        command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
        atomic_write_json(args.json, {"schema": SCHEMA, "device": name, "torch": torch.__version__, "tiny": args.tiny,
                                      "command": command.strip(),
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": out})
    rc = 1 if any("error" in r for r in out) else 0
    if not args.no_tests:
        rc = max(rc, subprocess.call([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_cuda.py")],
                                     cwd=ROOT))
    return rc


if __name__ == "__main__":
    sys.exit(main())
