"""Scaling of ring attention: per-rank memory, time and bytes sent for P = 1, 2, 4 ranks.

    python -m attnzoo.distributed.bench [--length 8192] [--ranks 1,2,4] [--layers 2] [--json FILE]

For each P, P fresh processes (gloo on 127.0.0.1) each hold one zigzag shard of a
sequence of ``--length`` tokens, q (1, H, L/P, hs), k, v (1, H, L/P, hs) float32, and
run ONE causal forward + backward of `ring_attention`, after
a warm-up on a tiny input. Per rank it records:

* peak memory: ``VmHWM`` after the call minus ``VmRSS`` just before it (the high-water
  mark reset first through ``/proc/self/clear_refs``): what the call itself adds;
* time of the call (wall clock, all ranks released together by a barrier);
* bytes this rank sent round the ring (`RING_STATS`), next to
  the analytic volume `ring_bytes`.

With ``--layers n`` (default 2) the same is measured for a stack of n
``TransformerEncoderLayer`` (E = H·hs, feed-forward 4E, causal) switched by
`context_parallel`, on x (1, L/P, E): there the activations
every layer keeps for the backward dominate, and the ring's transient buffers (one layer's
at a time) matter less. A row "P=1, one process, fused" runs attnzoo's single-process
path (torch's fused kernel, no ring) on the whole sequence, for reference. Every process uses ONE thread,
so P=1 is one core's work; on a machine with fewer cores than P the ranks share cores
and time stops falling: the memory and the bytes are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["ring_bytes", "format_table", "main"]


def ring_bytes(B: int, Hkv: int, N: int, hs: int, elem: int, P: int) -> int:
    """Bytes one rank sends for one forward + backward of ring attention over P ranks.

    Forward: P-1 hops of its k, v and key mask ``(2·B·Hkv·N·hs + B·N)`` elements. Backward:
    P-1 more hops of k, v, mask, and P hops of the dk/dv accumulators (``2·B·Hkv·N·hs``);
    the last brings them home.
    """
    if P == 1:
        return 0
    kv = 2 * B * Hkv * N * hs + B * N
    return (2 * (P - 1) * kv + P * 2 * B * Hkv * N * hs) * elem


def _kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(call) -> tuple[float, float]:
    """(peak MB the call adds, seconds)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _kb("VmRSS")
    t0 = time.perf_counter()
    call()
    seconds = time.perf_counter() - t0
    return max(0, _kb("VmHWM") - before) / 1024, seconds


def _rank(rank: int, world: int, port: int, spec: dict[str, Any], out_dir: str) -> None:
    from attnzoo.distributed import RING_STATS, ShardLayout, reset_ring_stats, ring_attention
    from attnzoo.functional import scaled_dot_product_attention

    from attnzoo import TransformerEncoderLayer
    from attnzoo.distributed import context_parallel

    torch.set_num_threads(spec["threads"])
    L, H, hs = spec["length"], spec["heads"], spec["head_dim"]
    fused, layers = spec["fused"], spec["layers"]
    if not fused:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    E = H * hs
    if layers:  # a stack of Transformer layers, context-parallel unless fused
        torch.manual_seed(0)
        model = torch.nn.ModuleList(TransformerEncoderLayer(E, H, 4 * E, dropout=0.0) for _ in range(layers))
        if not fused:
            context_parallel(model)

    def inputs(n: int) -> list[torch.Tensor]:
        if layers:
            return [torch.randn(1, n, E, generator=g).requires_grad_(), torch.randn(1, n, E, generator=g)]
        return [torch.randn(1, H, n, hs, generator=g).requires_grad_() for _ in range(3)] + [torch.randn(1, H, n, hs)]

    def step(*args: torch.Tensor) -> None:
        if layers:
            out, dout = args
            for layer in model:
                out = layer(out, is_causal=True)
        elif fused:
            out, dout = scaled_dot_product_attention(*args[:3], is_causal=True), args[3]
        else:
            out = ring_attention(*args[:3], ShardLayout(args[0].size(2) * world, world), is_causal=True)
            dout = args[3]
        out.backward(dout)

    step(*inputs(max(2, 256 // world)))  # warm-up: kernels, thread pool, gloo connections
    args = inputs(L // world)
    reset_ring_stats()
    if not fused:
        dist.barrier()
    peak_mb, seconds = _measure(lambda: step(*args))
    if not fused:
        dist.barrier()
        dist.destroy_process_group()
    res = {"peak_mb": peak_mb, "seconds": seconds, "bytes_sent": RING_STATS["bytes_sent"],
           "messages": RING_STATS["messages"]}
    Path(out_dir, f"{rank}.json").write_text(json.dumps(res))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_row(P: int, length: int, heads: int, head_dim: int, fused: bool = False, layers: int = 0) -> dict[str, Any]:
    """Launch P fresh processes and return the row (max over ranks, and per rank).

    ``layers=0``: one ring attention call; ``layers>0``: that many TransformerEncoderLayers.
    """
    threads = 1  # per process, for every P: the ranks of one row never compete for threads
    spec = {"length": length, "heads": heads, "head_dim": head_dim, "threads": threads, "fused": fused,
            "layers": layers}
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(P, _free_port(), spec, tmp), nprocs=P, join=True, start_method="spawn")
        ranks = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(P)]
    return {
        "P": P, "fused": fused, "layers": layers, "length": length, "local_length": length // P, "heads": heads, "head_dim": head_dim,
        "threads_per_rank": threads,
        "peak_mb": max(r["peak_mb"] for r in ranks), "seconds": max(r["seconds"] for r in ranks),
        "bytes_sent": max(r["bytes_sent"] for r in ranks),
        "bytes_analytic": 0 if fused else max(1, layers) * ring_bytes(1, heads, length // P, head_dim, 4, P),
        "per_rank": ranks,
    }


def _mb(n: float) -> str:
    return f"{n:.0f} MB" if n >= 10 else f"{n:.1f} MB"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of docs/performance.md (one line per row)."""
    lines = ["| what | ranks P | tokens per rank | peak memory per rank | vs P=1 | time (slowest rank) | "
             "sent per rank | analytic ring volume |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((b for b in rows if b["P"] == 1 and not b["fused"] and b["layers"] == r["layers"]), None)
        what = f"{r['layers']} Transformer layers" if r["layers"] else "attention"
        name = "1, one process, fused (no ring)" if r["fused"] else str(r["P"])
        measurable = base is not None and base["peak_mb"] > 0 and not r["fused"]  # tiny runs can measure 0 MB
        ratio = f"{r['peak_mb'] / base['peak_mb']:.2f}x" if measurable else "—"
        sent, analytic = f"{r['bytes_sent'] / 2**20:.1f} MiB", f"{r['bytes_analytic'] / 2**20:.1f} MiB"
        lines.append(f"| {what} | {name} | {r['local_length']} | {_mb(r['peak_mb'])} | {ratio} | {r['seconds']:.2f} s | "
                     f"{sent} | {analytic} |")
    return "\n".join(lines)


_COMMAND = "python -m attnzoo.distributed.bench"
#: Fewest elements per rank in each of q, k, v (or x, with --layers): 64 KiB in float32.
#: Peak memory is counted in 4 KiB pages, so a smaller problem can measure as 0 MB.
MIN_ELEMENTS = 1 << 14


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is an earlier results file of this benchmark (all it ever replaces)."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("command", "")).startswith(_COMMAND)
    except (OSError, ValueError, AttributeError):
        return False


def _json_problem(path: str) -> str | None:
    """Why ``--json PATH`` cannot be written, or None: its folder must exist and PATH be new
    or an earlier results file of this benchmark (which is all it ever replaces)."""
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        return "is a folder; give a file name"
    if not target.parent.is_dir():
        return f"folder {target.parent} does not exist"
    if not os.access(target.parent, os.W_OK):
        return f"cannot write in {target.parent}"
    if target.exists() and not _is_ours(target):
        return f"{target} exists and was not written by this benchmark; choose a new file name"
    return None


def _problem(args: argparse.Namespace) -> str | None:
    """The first bad argument, as the one line to print, or None."""
    if args.json and (problem := _json_problem(args.json)):  # never someone else's file
        return f"--json {args.json}: {problem}"
    try:
        ps = [int(p) for p in args.ranks.split(",")]
    except ValueError:
        ps = []
    if not ps or min(ps) < 1:
        return f"--ranks must be comma-separated positive ints, got {args.ranks!r}"
    if args.layers < 0:
        return f"--layers must be >= 0, got {args.layers}"
    for name in ("length", "heads", "head_dim"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    if any(args.length % (2 * p) for p in ps):
        return f"--length must be a multiple of 2·P for every P in {ps}, got {args.length}"
    per_rank = args.length // max(ps) * args.heads * args.head_dim
    if per_rank < MIN_ELEMENTS:
        return (f"--length {args.length} is too small to measure with --heads {args.heads} --head-dim "
                f"{args.head_dim} and P={max(ps)}: length/P·heads·head-dim = {per_rank} elements per rank, "
                f"peak memory (counted in 4 KiB pages) needs at least {MIN_ELEMENTS}")
    if not Path("/proc/self/clear_refs").exists():
        return "this benchmark needs Linux /proc/self/clear_refs to measure peak memory"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.distributed.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=8192, help="total tokens (a multiple of 2·max(P))")
    parser.add_argument("--ranks", default="1,2,4", help="comma-separated P values")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2,
                        help="also measure a stack of this many TransformerEncoderLayers (0: attention only)")
    parser.add_argument("--json", help="also write the rows to this file (atomically; never replacing a file "
                                       "this benchmark did not write, even one that appears during the run)")
    args = parser.parse_args(argv)
    if problem := _problem(args):  # before minutes of work
        print(f"error: {problem}", file=sys.stderr)
        return 2
    ps = [int(p) for p in args.ranks.split(",")]
    rows = []
    for layers in [0] + ([args.layers] if args.layers else []):
        rows.append(run_row(1, args.length, args.heads, args.head_dim, fused=True, layers=layers))
        for p in ps:
            rows.append(run_row(p, args.length, args.heads, args.head_dim, layers=layers))
            print(f"layers={layers} P={p}: done", file=sys.stderr, flush=True)
    if args.json:  # first: the table below cannot lose the results
        from .._io import write_json_owned

        machine = {"cpus": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0],
                   "backend": "gloo", "dtype": "float32", "causal": True, "layout": "zigzag"}
        command = f"{_COMMAND} " + " ".join(argv if argv is not None else sys.argv[1:])
        target = Path(args.json).expanduser().resolve()
        written = write_json_owned(target, {"machine": machine, "command": command, "rows": rows}, _is_ours)
        if written != target:
            print(format_table(rows))
            print(f"error: --json {args.json}: {target} appeared during the run and was not written by this "
                  f"benchmark; it was left as it is and the results were written to {written}", file=sys.stderr)
            return 1
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
