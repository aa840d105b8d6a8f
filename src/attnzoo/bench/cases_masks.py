"""Benchmark group `structured`: attention under structured masks (`attnzoo.masks`)
against torch's SDPA with the equivalent dense mask or bias, and against FlexAttention.

Shapes are (B, H, N, head size) self-attention in the run's dtype; "fwd+bwd" is one
forward and one backward of the attention alone. The dense references get their mask or
bias built before the timed call (they are not charged for building it); in the
peak-memory rows each side is measured in a fresh process, after one warm-up call at
N = 8·W (the same kernels as the measured call), and the dense side's peak includes
building its mask or bias, which is the memory its method needs. Both sides hold the
same results during the backward (the output and three gradients, 4·B·H·N·hs floats):
that floor bounds the memory ratio.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..functional import scaled_dot_product_attention
from ..masks import StructuredMask, documents, sliding_window
from ._core import Context, Job, Row, group
from ._memory import measure_in_subprocess

TORCH_SDPA = "torch.nn.functional.scaled_dot_product_attention"

#: (B, H, head size), sequence lengths and window per mode.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"B": 1, "H": 4, "hs": 64, "W": 256, "window_N": 16384, "scaling_N": (8192, 32768), "doc_N": 8192,
             "docs": 8, "flex_N": 8192, "flex_compile": True, "bias_N": 8192},
    "quick": {"B": 1, "H": 2, "hs": 16, "W": 32, "window_N": 512, "scaling_N": (256, 1024), "doc_N": 256,
              "docs": 4, "flex_N": 256, "flex_compile": False, "bias_N": 256},
}


def _fmt(**dims: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


def _window_mask(N: int, W: int, device: Any) -> torch.Tensor:
    """Dense (N, N) bool: query i sees keys i - W + 1 .. i (True = may attend)."""
    i, j = torch.arange(N, device=device)[:, None], torch.arange(N, device=device)[None, :]
    return (j <= i) & (j > i - W)


def _doc_ids(B: int, N: int, docs: int, device: Any) -> torch.Tensor:
    return (torch.arange(N, device=device) // (N // docs)).expand(B, N)  # (B, N)


def _alibi(H: int, device: Any, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """An ALiBi-style bias (-slope_h · |i - j|, slopes 2^(-8(h+1)/H)): per block and dense."""
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device=device, dtype=dtype)

    def tile(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:  # (H, lq, lk)
        distance = (q_idx.to(dtype) - kv_idx.to(dtype)).abs_()  # (lq, lk)
        return distance * -slopes.view(H, 1, 1)

    tile.relative = True  # type: ignore[attr-defined]  # a function of kv_idx - q_idx alone, as ALiBi

    def dense(N: int) -> torch.Tensor:  # (1, H, N, N)
        i = torch.arange(N, device=device)
        return tile(i[:, None], i[None, :]).unsqueeze(0)

    return tile, dense


def _inputs(s: dict[str, Any], N: int, device: Any, grad: bool) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(s["B"], s["H"], N, s["hs"], device=device, requires_grad=grad) for _ in range(3))
    return q, k, v, torch.randn(s["B"], s["H"], N, s["hs"], device=device)


def _train_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, **kw: Any) -> Callable[[], None]:
    def ours() -> None:
        q.grad = k.grad = v.grad = None
        scaled_dot_product_attention(q, k, v, **kw).backward(g)
    return ours


def _torch_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                mask: torch.Tensor) -> Callable[[], None]:
    def theirs() -> None:
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(g)
    return theirs


def _slow(ctx: Context) -> dict[str, Any]:
    """Compare options for calls of seconds: one warm-up, at most 3 samples of one call."""
    return {} if ctx.quick else {"warmup": 1, "repeats": min(ctx.repeats, 3), "min_sample_s": 0.0}


def _case(spec: dict[str, Any], device: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """The peak-memory child (see `_memory`): `case` window or bias, `impl` attnzoo or torch."""
    s = spec

    def make(N: int) -> Callable[[], None]:
        q, k, v, g = _inputs(s, N, device, grad=True)
        if s["case"] == "window":
            if s["impl"] == "attnzoo":
                return _train_step(q, k, v, g, mask=sliding_window(s["W"] - 1))
            return lambda: _torch_step(q, k, v, g, _window_mask(N, s["W"], device))()
        tile, dense = _alibi(s["H"], device, q.dtype)
        if s["impl"] == "attnzoo":
            return _train_step(q, k, v, g, score_bias=tile)
        return lambda: _torch_step(q, k, v, g, dense(N))()

    # warm up on the code paths of the measured call (a window needs N >> W for the band
    # path): code first touched inside the measured call would count as its memory
    return make(min(8 * s["W"], s["N"])), make(s["N"])


@group("structured", "structured masks (attnzoo.masks): block-skipping attention vs dense masks and FlexAttention")
def structured_group(ctx: Context) -> Iterator[Job]:
    s = SIZES["quick" if ctx.quick else "full"]
    base = {"B": s["B"], "H": s["H"], "hs": s["hs"]}
    N = s["window_N"]
    yield Job("sliding window fwd+bwd", _fmt(**base, N=N, W=s["W"]), lambda: _window_time(ctx, s, N))
    yield Job("sliding window peak memory", _fmt(**base, N=N, W=s["W"]),
              lambda: _memory(ctx, s, "window", N, f"sliding window W={s['W']} fwd+bwd peak memory"))
    n0, n1 = s["scaling_N"]
    yield Job("sliding window growth", _fmt(**base, W=s["W"], N=f"{n0}->{n1}"), lambda: _scaling(ctx, s, n0, n1))
    yield Job("documents fwd+bwd", _fmt(**base, N=s["doc_N"], docs=s["docs"]), lambda: _documents(ctx, s))
    yield Job("sliding window fwd vs flex", _fmt(**base, N=s["flex_N"], W=s["W"]), lambda: _flex(ctx, s))
    yield Job("ALiBi bias fwd+bwd", _fmt(**base, N=s["bias_N"]), lambda: _bias_time(ctx, s))
    yield Job("ALiBi bias peak memory", _fmt(**base, N=s["bias_N"]),
              lambda: _memory(ctx, s, "bias", s["bias_N"], "ALiBi bias fwd+bwd peak memory"))


def _window_time(ctx: Context, s: dict[str, Any], N: int) -> Row:
    q, k, v, g = _inputs(s, N, ctx.device, grad=True)
    dense = _window_mask(N, s["W"], ctx.device)
    a, r = ctx.compare(_train_step(q, k, v, g, mask=sliding_window(s["W"] - 1)), _torch_step(q, k, v, g, dense),
                       **_slow(ctx))
    return Row("structured", f"sliding window W={s['W']} fwd+bwd", _fmt(B=s["B"], H=s["H"], N=N, hs=s["hs"]),
               attnzoo=a, reference=r, reference_name=f"{TORCH_SDPA}, dense bool (N, N) mask",
               note="goal: >= 10x faster at N = 16384")


def _memory(ctx: Context, s: dict[str, Any], case: str, N: int, label: str) -> Row:
    spec = {"op": "attnzoo.bench.cases_masks:_case", "case": case, "N": N, "W": s["W"], "B": s["B"], "H": s["H"],
            "hs": s["hs"], "device": str(ctx.device), "threads": torch.get_num_threads()}
    ours, ref = measure_in_subprocess({**spec, "impl": "attnzoo"}), measure_in_subprocess({**spec, "impl": "torch"})
    what = "dense bool (N, N) mask" if case == "window" else f"materialised float (1, {s['H']}, N, N) bias"
    goal = ">= 20x less" if case == "window" else "<= 1/4 of the reference's"
    return Row("structured", label, _fmt(B=s["B"], H=s["H"], N=N, hs=s["hs"]), unit="MB", attnzoo=ours["peak_mb"],
               reference=ref["peak_mb"], reference_name=f"{TORCH_SDPA}, {what} (built inside the measured call)",
               note=f"each side in a fresh process; goal: {goal} peak memory",
               extra={"attnzoo_s": ours["seconds"], "reference_s": ref["seconds"], "method": ours["method"]})


def _scaling(ctx: Context, s: dict[str, Any], n0: int, n1: int) -> Row:
    small, large = _inputs(s, n0, ctx.device, grad=True), _inputs(s, n1, ctx.device, grad=True)
    mask = sliding_window(s["W"] - 1)
    t0, t1 = ctx.compare(_train_step(*small, mask=mask), _train_step(*large, mask=mask), **_slow(ctx))
    return Row("structured", f"sliding window W={s['W']} fwd+bwd, N={n1} vs N={n0}",
               _fmt(B=s["B"], H=s["H"], hs=s["hs"]), attnzoo=t1, reference=t0,
               reference_name=f"attnzoo itself at N={n0}",
               note=f"ratio = t(N={n0}) / t(N={n1}); linear in N: {n0 / n1:.3g}, quadratic: {(n0 / n1) ** 2:.3g}; "
                    f"goal: t(N={n1}) / t(N={n0}) <= 4.5",
               extra={"growth": t1 / t0, "length_ratio": n1 / n0})


def _documents(ctx: Context, s: dict[str, Any]) -> Row:
    N, docs = s["doc_N"], s["docs"]
    q, k, v, g = _inputs(s, N, ctx.device, grad=True)
    ids = _doc_ids(s["B"], N, docs, ctx.device)
    dense = (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)  # (B, 1, N, N)
    a, r = ctx.compare(_train_step(q, k, v, g, mask=documents(ids)), _torch_step(q, k, v, g, dense), **_slow(ctx))
    return Row("structured", f"documents ({docs} x N/{docs}) fwd+bwd", _fmt(B=s["B"], H=s["H"], N=N, hs=s["hs"]),
               attnzoo=a, reference=r, reference_name=f"{TORCH_SDPA}, dense bool (B, 1, N, N) mask",
               note="goal: >= 4x faster")


def _flex(ctx: Context, s: dict[str, Any]) -> list[Row]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    N, W = s["flex_N"], s["W"]
    q, k, v, _ = _inputs(s, N, ctx.device, grad=False)
    mask: StructuredMask = sliding_window(W - 1)
    block_mask = create_block_mask(mask, None, None, N, N, device=str(ctx.device))  # the same mask_mod

    def ours() -> None:
        with torch.no_grad():
            scaled_dot_product_attention(q, k, v, mask=mask)

    def flex(fn: Callable) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # eager flex: "use torch.compile" (measured on purpose)
                fn(q, k, v, block_mask=block_mask)
        return call

    shape = _fmt(B=s["B"], H=s["H"], N=N, hs=s["hs"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        diff = (flex_attention(q, k, v, block_mask=block_mask) - scaled_dot_product_attention(q, k, v, mask=mask))
    rows = []
    a, r = ctx.compare(ours, flex(flex_attention), **_slow(ctx))
    rows.append(Row("structured", f"sliding window W={W} fwd vs eager flex", shape, attnzoo=a, reference=r,
                    reference_name="torch flex_attention, eager, create_block_mask of the same mask",
                    extra={"max_abs_diff": diff.abs().max().item()}))
    if s["flex_compile"]:
        compiled = torch.compile(flex_attention)
        t0 = time.perf_counter()
        flex(compiled)()  # compiles
        compile_s = time.perf_counter() - t0
        a, r = ctx.compare(ours, flex(compiled), **_slow(ctx))
        rows.append(Row("structured", f"sliding window W={W} fwd vs compiled flex", shape, attnzoo=a, reference=r,
                        reference_name="torch.compile(flex_attention), same block mask (attnzoo not compiled)",
                        note="goal: >= 1.0x; on CPU compiled flex has a forward only",
                        extra={"compile_s": compile_s}))
    return rows


def _bias_time(ctx: Context, s: dict[str, Any]) -> Row:
    N = s["bias_N"]
    q, k, v, g = _inputs(s, N, ctx.device, grad=True)
    tile, dense = _alibi(s["H"], ctx.device, q.dtype)
    bias = dense(N)  # (1, H, N, N)
    a, r = ctx.compare(_train_step(q, k, v, g, score_bias=tile), _torch_step(q, k, v, g, bias), **_slow(ctx))
    return Row("structured", "ALiBi-style bias fwd+bwd", _fmt(B=s["B"], H=s["H"], N=N, hs=s["hs"]), attnzoo=a,
               reference=r, reference_name=f"{TORCH_SDPA}, materialised float (1, H, N, N) bias (prebuilt)",
               note="attnzoo builds each block's bias in the call; goal: >= 1.0x",
               extra={"bias_mb": bias.numel() * bias.element_size() / 2**20})
