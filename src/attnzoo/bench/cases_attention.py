"""Benchmark groups for attention: functional, MHA train/eval/weights, memory, long, throughput."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import MultiHeadAttention
from ..functional import scaled_dot_product_attention
from ._core import Context, Job, Row, group
from ._memory import measure_in_subprocess

TORCH_MHA = "torch.nn.MultiheadAttention"


def _fmt(**dims: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


# ----------------------------------------------------------------------------- functional
@group("functional", "attnzoo scaled_dot_product_attention vs F.scaled_dot_product_attention, forward")
def functional_group(ctx: Context) -> Iterator[Job]:
    for B, H, N, hs in ctx.sizes["functional"]:
        for causal in (False, True):
            yield Job(f"sdpa fwd{' causal' if causal else ''}", _fmt(B=B, H=H, N=N, hs=hs),
                      lambda B=B, H=H, N=N, hs=hs, causal=causal: _functional(ctx, B, H, N, hs, causal))


def _functional(ctx: Context, B: int, H: int, N: int, hs: int, causal: bool) -> Row:
    q, k, v = (torch.randn(B, H, N, hs, device=ctx.device) for _ in range(3))

    def ours() -> None:
        with torch.inference_mode():
            scaled_dot_product_attention(q, k, v, is_causal=causal)

    def theirs() -> None:
        with torch.inference_mode():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    a, r = ctx.compare(ours, theirs)
    return Row("functional", f"sdpa fwd{' causal' if causal else ''}", _fmt(B=B, H=H, N=N, hs=hs),
               attnzoo=a, reference=r, reference_name="torch.nn.functional.scaled_dot_product_attention")


# ------------------------------------------------------------------------------------ MHA
def _pair(ctx: Context, E: int, H: int) -> tuple[nn.MultiheadAttention, MultiHeadAttention]:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True, device=ctx.device)
    return ref, MultiHeadAttention.from_torch(ref)


def _mha_jobs(ctx: Context, name: str, op: str, fn: Any) -> Iterator[Job]:
    E, H = ctx.sizes["mha_dims"]
    for B, N in ctx.sizes["mha"]:
        shape = _fmt(B=B, N=N, E=E, H=H)
        yield Job(op, shape, lambda B=B, N=N, shape=shape: Row(
            name, op, shape, reference_name=TORCH_MHA, **fn(ctx, B, N, E, H)))


@group("mha_train", "MultiHeadAttention forward+backward vs nn.MultiheadAttention, need_weights=False")
def mha_train_group(ctx: Context) -> Iterator[Job]:
    yield from _mha_jobs(ctx, "mha_train", "self-attn fwd+bwd", _train)


def _train(ctx: Context, B: int, N: int, E: int, H: int) -> dict[str, Any]:
    ref, ours = _pair(ctx, E, H)
    x = torch.randn(B, N, E, device=ctx.device, requires_grad=True)
    g = torch.randn(B, N, E, device=ctx.device)

    def step(m: nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x, x, x, need_weights=False)[0].backward(g)

    a, r = ctx.compare(lambda: step(ours), lambda: step(ref))
    return {"attnzoo": a, "reference": r}


@group("mha_eval", "MultiHeadAttention eval (inference_mode, need_weights=False) vs torch's fast path")
def mha_eval_group(ctx: Context) -> Iterator[Job]:
    yield from _mha_jobs(ctx, "mha_eval", "self-attn eval", _eval(False))


@group("mha_weights", "MultiHeadAttention eval with need_weights=True (head-averaged) vs torch")
def mha_weights_group(ctx: Context) -> Iterator[Job]:
    for op, fn, key in (("self-attn eval + avg weights", _eval(True), "weights"),
                        ("causal self-attn eval + avg weights", _eval(True, causal=True), "weights_causal")):
        for B, N, E, H in ctx.sizes[key]:
            shape = _fmt(B=B, N=N, E=E, H=H)
            yield Job(op, shape, lambda B=B, N=N, E=E, H=H, shape=shape, op=op, fn=fn: Row(
                "mha_weights", op, shape, reference_name=TORCH_MHA, **fn(ctx, B, N, E, H)))


# --------------------------------------------------------------------------------- masked
@group("masked", "MultiHeadAttention fwd+bwd, causal + key padding vs causal alone (same module, same input)")
def masked_group(ctx: Context) -> Iterator[Job]:
    s = ctx.sizes["masked"]
    for N in s["N"]:
        shape = _fmt(B=s["B"], N=N, E=s["E"], H=s["H"])
        yield Job("causal + key padding fwd+bwd", shape, lambda N=N, shape=shape: _masked(ctx, s, N, shape))


def _masked(ctx: Context, s: dict[str, Any], N: int, shape: str) -> Row:
    B, E, H = s["B"], s["E"], s["H"]
    torch.manual_seed(0)
    m = MultiHeadAttention(E, H, device=ctx.device)
    x = torch.randn(B, N, E, device=ctx.device, requires_grad=True)
    g = torch.randn(B, N, E, device=ctx.device)
    kpm = torch.zeros(B, N, dtype=torch.bool, device=ctx.device)
    kpm[:, N - N // 8:] = True  # the last eighth of every sequence is padding

    def step(**kw: Any) -> Any:
        def call() -> None:
            m.zero_grad(set_to_none=True)
            x.grad = None
            m(x, is_causal=True, **kw)[0].backward(g)
        return call

    slow = N * N > 1 << 26  # one call per sample is enough above that
    a, r = ctx.compare(step(key_padding_mask=kpm), step(), **({"warmup": 1, "min_sample_s": 0.0} if slow else {}))
    return Row("masked", "causal + key padding fwd+bwd", shape, attnzoo=a, reference=r,
               reference_name="the same module, causal alone (no mask)",
               note="ratio = causal-alone time / causal + key padding time (goal: >= 1/1.5 on a CPU, 1/1.3 on a GPU)")


def _eval(need_weights: bool, causal: bool = False) -> Any:
    """Eval-mode self-attention; ``causal``: attnzoo's ``is_causal=True`` against torch's
    ``is_causal=True`` with the causal ``attn_mask`` it requires (True = not allowed)."""
    def run(ctx: Context, B: int, N: int, E: int, H: int) -> dict[str, Any]:
        ref, ours = _pair(ctx, E, H)
        ref.eval(), ours.eval()
        x = torch.randn(B, N, E, device=ctx.device)
        future = torch.ones(N, N, dtype=torch.bool, device=ctx.device).triu(1) if causal else None  # (N, N)
        kw: dict[str, dict[str, Any]] = {"ours": {"is_causal": True} if causal else {},
                                         "ref": {"is_causal": True, "attn_mask": future} if causal else {}}

        def call(m: nn.Module, side: str) -> Any:
            with torch.inference_mode():
                return m(x, x, x, need_weights=need_weights, **kw[side])

        o1, w1 = call(ours, "ours")  # same answer before timing anything
        o2, w2 = call(ref, "ref")
        diff = (o1 - o2).abs().max().item()
        if need_weights:
            diff = max(diff, (w1 - w2).abs().max().item())
        a, r = ctx.compare(lambda: call(ours, "ours"), lambda: call(ref, "ref"))
        return {"attnzoo": a, "reference": r, "extra": {"max_abs_diff": diff}}

    return run


# --------------------------------------------------------------------------------- memory
@group("memory", "peak memory of averaged weights (each in a fresh process), and weights_for rows")
def memory_group(ctx: Context) -> Iterator[Job]:
    s = ctx.sizes["memory"]
    B, N, E, H, rows = s["B"], s["N"], s["E"], s["H"], s["rows"]
    shape = _fmt(B=B, N=N, E=E, H=H)
    results: dict[Any, dict[str, Any]] = {}

    def child(impl: str, rows: int | None) -> dict[str, Any]:
        if (impl, rows) not in results:
            spec = {"op": "mha_weights", "impl": impl, "rows": rows, "B": B, "N": N, "E": E, "H": H,
                    "device": str(ctx.device), "threads": torch.get_num_threads()}
            results[impl, rows] = measure_in_subprocess(spec)
        return results[impl, rows]

    def full() -> Row:
        ours, ref = child("attnzoo", None), child("torch", None)
        return Row("memory", "eval avg weights peak memory", shape, unit="MB", attnzoo=ours["peak_mb"],
                   reference=ref["peak_mb"], reference_name=TORCH_MHA,
                   extra={"attnzoo_s": ours["seconds"], "reference_s": ref["seconds"], "method": ours["method"]})

    def some_rows_memory() -> Row:
        part, whole = child("attnzoo", rows), child("attnzoo", None)
        return Row("memory", f"weights_for={rows} rows peak memory", shape, unit="MB", attnzoo=part["peak_mb"],
                   reference=whole["peak_mb"], reference_name="attnzoo need_weights=True, all rows",
                   extra={"method": part["method"]})

    def some_rows_time() -> Row:
        torch.manual_seed(0)
        m = MultiHeadAttention(E, H, device=ctx.device).eval()
        x = torch.randn(B, N, E, device=ctx.device)
        idx = torch.arange(rows, device=ctx.device) * (N - 1) // max(1, rows - 1)  # spread rows (exact in ints)

        def call(**kw: Any) -> None:
            with torch.inference_mode():
                m(x, need_weights=True, **kw)

        a, r = ctx.compare(lambda: call(weights_for=idx), call)
        return Row("memory", f"weights_for={rows} rows time", shape, attnzoo=a, reference=r,
                   reference_name="attnzoo need_weights=True, all rows")

    yield Job("eval avg weights peak memory", shape, full)
    yield Job(f"weights_for={rows} rows peak memory", shape, some_rows_memory)
    yield Job(f"weights_for={rows} rows time", shape, some_rows_time)


# ----------------------------------------------------------------------------------- long
@group("long", "attnzoo MHA forward+backward on one long sequence: peak memory and time")
def long_group(ctx: Context) -> Iterator[Job]:
    s = ctx.sizes["long"]
    B, N, E, H = s["B"], s["N"], s["E"], s["H"]
    shape = _fmt(B=B, N=N, E=E, H=H)
    for mask in ("none", "causal", "padding"):
        label = {"none": "fwd+bwd", "causal": "fwd+bwd causal", "padding": "fwd+bwd key padding"}[mask]
        yield Job(label, shape, lambda mask=mask, label=label: _long(ctx, mask, label, shape, B, N, E, H))


def _long(ctx: Context, mask: str, label: str, shape: str, B: int, N: int, E: int, H: int) -> list[Row]:
    spec = {"op": "mha_long", "mask": mask, "B": B, "N": N, "E": E, "H": H, "device": str(ctx.device),
            "threads": torch.get_num_threads()}
    res = measure_in_subprocess(spec)
    n2 = B * H * N * N * 4 / 2**20  # what materialising per-head weights would take
    note = (f"attnzoo only (one call in a fresh process); materialising the per-head float32 "
            f"weights would take {n2:,.0f} MB") if mask == "none" else None
    extra = {"method": res["method"]}
    return [
        Row("long", f"{label} peak memory", shape, unit="MB", attnzoo=res["peak_mb"], note=note, extra=extra),
        Row("long", f"{label} time", shape, attnzoo=res["seconds"], extra={"calls": 1}),
    ]


# ----------------------------------------------------------------------------- throughput
@group("throughput", "attnzoo SDPA forward GFLOP/s next to this machine's matmul GFLOP/s in the same dtype")
def throughput_group(ctx: Context) -> Iterator[Job]:
    s = ctx.sizes["throughput"]
    for N in s["N"]:
        shape = _fmt(B=s["B"], H=s["H"], N=N, hs=s["hs"])
        yield Job("sdpa fwd GFLOP/s", shape, lambda N=N, shape=shape: _throughput(ctx, s, N, shape))


def _throughput(ctx: Context, s: dict[str, Any], N: int, shape: str) -> Row:
    B, H, hs, M = s["B"], s["H"], s["hs"], s["mm"]
    q, k, v = (torch.randn(B, H, N, hs, device=ctx.device) for _ in range(3))
    a = torch.randn(M, M, device=ctx.device)

    def attn() -> None:
        with torch.inference_mode():
            scaled_dot_product_attention(q, k, v)

    def mm() -> None:
        torch.mm(a, a)

    ta, tm = ctx.compare(attn, mm)
    attn_flops, mm_flops = 4 * B * H * N * N * hs, 2 * M**3
    dtype = str(a.dtype).removeprefix("torch.")
    return Row("throughput", "sdpa fwd GFLOP/s", shape, unit="GFLOP/s", attnzoo=attn_flops / ta / 1e9,
               reference=mm_flops / tm / 1e9, reference_name=f"torch.mm {dtype} {M}x{M}x{M} (the matmul ceiling)",
               extra={"attnzoo_s": ta, "mm_s": tm, "attn_flops": attn_flops, "mm_flops": mm_flops})
