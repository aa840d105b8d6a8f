"""Benchmark group `positions`: what positions cost inside `MultiHeadAttention`.

* RoPE: one forward and backward of `MultiHeadAttention(E, H, rotary=RotaryEmbedding(hs))`
  on `(B, N, E)` against the same module without positions (same weights), sampled in turn.
* Rolling-cache decoding: one small causal self-attention layer with
  `sliding_window(W - 1)` decodes token by token with `decode_step` over a
  `RollingKVCache` of W slots, against the same layer over a full `KVCache`
  (`max_len` = the tokens generated). Time per token is the mean over the last steps
  before 1k, 4k and 16k generated tokens, both caches stepped in turn in one process;
  peak memory of a whole generation is measured in a fresh process per side and length
  (`attnzoo.bench._memory`), the cache allocated inside the measured call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..attention import MultiHeadAttention
from ..kvcache import KVCache
from ..masks import sliding_window
from ..positions import RotaryEmbedding
from ..rolling_cache import RollingKVCache
from ._core import Context, Job, Row, group
from ._memory import measure_in_subprocess

#: RoPE shape (B, N, E, H) and decoding shape (E, H, W, lengths, steps averaged) per mode.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"rope": (2, 2048, 512, 8), "decode": {"E": 256, "H": 4, "W": 256, "lengths": (1024, 4096, 16384),
                                                   "tail": 256}},
    "quick": {"rope": (1, 128, 64, 2), "decode": {"E": 32, "H": 2, "W": 16, "lengths": (64, 128, 256),
                                                  "tail": 16}},
}


def _fmt(**dims: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


@group("positions", "positions in MultiHeadAttention: RoPE overhead, rolling-cache decoding (time and memory)")
def positions_group(ctx: Context) -> Iterator[Job]:
    s = SIZES["quick" if ctx.quick else "full"]
    B, N, E, H = s["rope"]
    d = s["decode"]
    yield Job("RoPE fwd+bwd", _fmt(B=B, N=N, E=E, H=H), lambda: _rope(ctx, s["rope"]))
    shape = _fmt(E=d["E"], H=d["H"], W=d["W"])
    yield Job("rolling-cache decode ms/token", shape, lambda: _decode_time(ctx, d))
    yield Job("rolling-cache decode peak memory", shape, lambda: _decode_memory(ctx, d))


def _rope(ctx: Context, dims: tuple[int, int, int, int]) -> Row:
    B, N, E, H = dims
    torch.manual_seed(0)
    plain = MultiHeadAttention(E, H, device=ctx.device)
    rope = MultiHeadAttention(E, H, rotary=RotaryEmbedding(E // H), device=ctx.device)
    rope.load_state_dict(plain.state_dict())
    x = torch.randn(B, N, E, device=ctx.device, requires_grad=True)
    g = torch.randn(B, N, E, device=ctx.device)

    def step(mha: MultiHeadAttention) -> Callable[[], None]:
        def call() -> None:
            x.grad = None
            mha.zero_grad(set_to_none=True)
            mha(x, is_causal=True)[0].backward(g)
        return call

    a, r = ctx.compare(step(rope), step(plain))
    return Row("positions", "RoPE fwd+bwd (causal self-attention)", _fmt(B=B, N=N, E=E, H=H), attnzoo=a, reference=r,
               reference_name="attnzoo.MultiHeadAttention without positions (same weights)",
               note="goal: RoPE adds <= 10% (attnzoo / reference <= 1.10)", extra={"overhead": a / r - 1.0})


def _layer(E: int, H: int, device: Any) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(E, H, rotary=RotaryEmbedding(E // H), device=device).eval()


def _decode_time(ctx: Context, d: dict[str, Any]) -> list[Row]:
    """Each cache stepped alone, token by token, to the longest length; per-step times kept.

    Not interleaved: a full cache's step reads all its keys, which at 16k tokens evicts
    the rolling cache's data from the CPU caches and made the rolling steps beside it slow
    down with the length (a first version measured that, not the rolling cache)."""
    E, H, W, lengths, tail = d["E"], d["H"], d["W"], d["lengths"], d["tail"]
    n = max(lengths)
    mha, mask = _layer(E, H, ctx.device), sliding_window(W - 1)
    rolling = RollingKVCache(1, H, W, E // H, device=ctx.device)
    full = KVCache(1, H, n, E // H, device=ctx.device)
    xs = torch.randn(1, n, E, device=ctx.device)
    times = {"rolling": [], "full": []}
    with torch.no_grad():
        for name, cache in (("rolling", rolling), ("full", full)):
            for t in range(n):
                t0 = time.perf_counter()
                mha.decode_step(xs[:, t:t + 1], cache, t, mask=mask)
                ctx.sync()
                times[name].append(time.perf_counter() - t0)
    rows = []
    per = {}
    for length in lengths:
        a = _median(times["rolling"][length - tail:length])
        r = _median(times["full"][length - tail:length])
        per[length] = a
        rows.append(Row("positions", f"rolling-cache decode, time per token at {length} tokens",
                        _fmt(E=E, H=H, W=W), attnzoo=a, reference=r,
                        reference_name=f"the same layer over a full KVCache (max_len={n})",
                        note=f"median step time over tokens {length - tail}..{length - 1}, sliding_window({W - 1})"))
    lo, hi = per[min(lengths)], per[max(lengths)]
    rows.append(Row("positions", f"rolling-cache decode time per token, {max(lengths)} vs {min(lengths)} tokens",
                    _fmt(E=E, H=H, W=W), attnzoo=hi, reference=lo,
                    reference_name=f"attnzoo itself at {min(lengths)} tokens",
                    note="goal: flat within 10% (attnzoo / reference <= 1.10)", extra={"growth": hi / lo}))
    return rows


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _decode_memory(ctx: Context, d: dict[str, Any]) -> list[Row]:
    rows, peaks = [], {}
    for length in d["lengths"]:
        spec = {"op": "attnzoo.bench.cases_positions:_decode_case", "E": d["E"], "H": d["H"], "W": d["W"],
                "N": length, "device": str(ctx.device), "threads": torch.get_num_threads()}
        ours, ref = measure_in_subprocess({**spec, "impl": "rolling"}), measure_in_subprocess({**spec, "impl": "full"})
        peaks[length] = ours["peak_mb"]
        rows.append(Row("positions", f"rolling-cache decode peak memory, {length} tokens",
                        _fmt(E=d["E"], H=d["H"], W=d["W"]), unit="MB", attnzoo=ours["peak_mb"],
                        reference=ref["peak_mb"], reference_name="the same layer over a full KVCache (max_len = tokens)",
                        note="each side in a fresh process, the cache allocated inside the measured generation",
                        extra={"attnzoo_s": ours["seconds"], "reference_s": ref["seconds"], "method": ours["method"]}))
    lo, hi = min(d["lengths"]), max(d["lengths"])
    rows.append(Row("positions", f"rolling-cache decode peak memory, {hi} vs {lo} tokens",
                    _fmt(E=d["E"], H=d["H"], W=d["W"]), unit="MB", attnzoo=peaks[hi], reference=peaks[lo],
                    reference_name=f"attnzoo itself at {lo} tokens", note="goal: flat within 10%",
                    extra={"growth": peaks[hi] / peaks[lo] if peaks[lo] else None}))
    return rows


def _decode_case(spec: dict[str, Any], device: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """The peak-memory child (see `_memory`): generate `N` tokens with `impl` rolling or full."""
    E, H, W = spec["E"], spec["H"], spec["W"]
    mha, mask = _layer(E, H, device), sliding_window(W - 1)

    def make(n: int) -> Callable[[], None]:
        xs = torch.randn(1, n, E, device=device)

        def call() -> None:
            cache = (RollingKVCache(1, H, W, E // H, device=device) if spec["impl"] == "rolling"
                     else KVCache(1, H, n, E // H, device=device))
            with torch.no_grad():
                for t in range(n):
                    mha.decode_step(xs[:, t:t + 1], cache, t, mask=mask)
        return call

    return make(min(W + 8, spec["N"])), make(spec["N"])
