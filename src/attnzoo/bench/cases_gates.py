"""The `gates` bench group: every CNN gate inside a ResNet-50 stage, fwd+bwd, against
its paper formula written plainly in torch (`_gate_formulas.py`).

The stage is a ResNet-50 conv2_x bottleneck, x (B, 256, 56, 56) (full size: B=2):
`relu(x + gate(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))))`, training mode, the
gate on the residual branch where SENet, CBAM, GCNet and the others put it. The two conv
units (`SelectiveKernel`, `SplitAttention`) replace `relu(bn2(conv2(.)))` instead.

Per gate, two rows:

* `<Gate> stage fwd+bwd` (s): attnzoo's module vs the plain formula with the same weights
  in the same stage, interleaved; the ratio is plain / attnzoo (> 1: attnzoo faster).
* `<Gate> overhead over stage` (%): attnzoo column: time overhead of the gated stage
  (attnzoo's module) over the same stage without a gate, the two timed interleaved in
  that job (a baseline timed once apart drifted by more than the overheads); reference
  column: forward FLOPs overhead counted by `torch.utils.flop_counter.FlopCounterMode`
  (convs and matmuls only, no elementwise ops) on the plain formula, the same math: the
  counter misses the CPU fused attention op NonLocal runs (its count is `extra["flops"]`);
  the paper's figure, where known, is in the operation name and in `extra`.

And a memory row: NonLocal fwd+bwd at 56x56 (B=2, C=256) vs the (HW)² softmax formula,
peak memory of each in a fresh process (`_memory.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .. import gates
from ._core import Context, Job, Row, group
from ._gate_formulas import FORMULAS, PAPER
from ._memory import measure_in_subprocess

__all__ = ["gates_group", "Stage", "build_gate", "randomise_zeros", "UNITS", "SIZES", "nonlocal_memory_op"]

#: (B, C, H=W) of the stage per mode; the memory row is always B=2, C=256, 56x56 in full.
SIZES = {"full": {"shape": (2, 256, 56), "memory": (2, 256, 56)},
         "quick": {"shape": (2, 32, 8), "memory": (2, 32, 8)}}
#: Conv units: they replace the stage's 3x3 convolution, not follow the branch.
UNITS = ("SelectiveKernel", "SplitAttention")


def _sizes(ctx: Context) -> dict[str, Any]:
    return ctx.sizes.get("gates") or SIZES["quick" if ctx.quick else "full"]


class Stage(nn.Module):
    """A ResNet-50 bottleneck (C -> C/4 -> C/4 -> C, identity shortcut)."""

    def __init__(self, channels: int, device: Any = None) -> None:
        super().__init__()
        mid, kw = channels // 4, {"device": device, "bias": False}
        self.conv1, self.bn1 = nn.Conv2d(channels, mid, 1, **kw), nn.BatchNorm2d(mid, device=device)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, **kw), nn.BatchNorm2d(mid, device=device)
        self.conv3, self.bn3 = nn.Conv2d(mid, channels, 1, **kw), nn.BatchNorm2d(channels, device=device)

    def forward(self, x: Tensor, gate: Callable[[Tensor], Tensor] | None = None,
                unit: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        t = F.relu(self.bn1(self.conv1(x)))  # (B, C/4, H, W)
        t = unit(t) if unit is not None else F.relu(self.bn2(self.conv2(t)))
        t = self.bn3(self.conv3(t))  # (B, C, H, W)
        return F.relu(x + (t if gate is None else gate(t)))


def build_gate(name: str, channels: int, device: Any = None) -> nn.Module:
    """The attnzoo module benchmarked as `name`: default arguments, as `add_attention`
    builds it; a conv unit gets the stage's mid width (C/4)."""
    cls = getattr(gates, name)
    if name == "SelectiveKernel":
        return cls(channels // 4, groups=32 if channels >= 128 else 1, device=device)
    if name == "SplitAttention":
        return cls(channels // 4, device=device)
    if name == "SpatialAttention":
        return cls(device=device)
    if name == "SimAM":
        return cls(channels)
    return cls(channels, device=device)


def randomise_zeros(m: nn.Module) -> None:
    """Give every all-zero parameter random values: the identity starts (NonLocal's last
    BN, GlobalContext's fc2, SRM's cfc) would make the gated stage's output not test the gate."""
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.normal_(0.0, 0.5)


def _both_orders(ctx: Context, a: Callable[[], None], b: Callable[[], None]) -> tuple[float, float]:
    """Mean of two interleaved medians, A B A B ... then B A B A ... (half the repeats each):
    on a loaded CPU the side sampled first ran a few % slower even against itself."""
    half = max(1, ctx.repeats // 2)
    a1, b1 = ctx.compare(a, b, repeats=half)
    b2, a2 = ctx.compare(b, a, repeats=half, warmup=0)
    return (a1 + a2) / 2, (b1 + b2) / 2


def _flops(fn: Callable[[], Any]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@group("gates", "every CNN gate in a ResNet-50 bottleneck (56x56, C=256) fwd+bwd vs its paper formula in plain "
                "torch; time and FLOPs overhead over the bare stage; NonLocal peak memory")
def gates_group(ctx: Context) -> Iterator[Job]:
    B, C, S = _sizes(ctx)["shape"]
    shape = f"B={B} C={C} H={S} W={S}"
    torch.manual_seed(0)
    stage = Stage(C, device=ctx.device)
    x = torch.randn(B, C, S, S, device=ctx.device, requires_grad=True)
    grad = torch.randn(B, C, S, S, device=ctx.device)
    state: dict[str, Any] = {}

    def step(fwd: Callable[[], Tensor], params: list[nn.Parameter]) -> Callable[[], None]:
        def call() -> None:
            x.grad = None
            for p in params:
                p.grad = None
            fwd().backward(grad)
        return call

    def bare() -> Row:
        params = list(stage.parameters())
        state["stage_s"] = ctx.measure(step(lambda: stage(x), params))
        state["stage_flops"] = _flops(lambda: stage(x))
        return Row("gates", "bottleneck, no gate fwd+bwd", shape, attnzoo=state["stage_s"],
                   reference_name="the stage the gates are timed in (no reference)",
                   extra={"flops": state["stage_flops"]})

    def gated(name: str) -> list[Row]:
        if "stage_s" not in state:
            bare()
        torch.manual_seed(1)
        m = build_gate(name, C, ctx.device).train()
        randomise_zeros(m)
        formula = FORMULAS[name]
        where = "unit" if name in UNITS else "gate"
        ours = lambda: stage(x, **{where: m})  # noqa: E731
        plain = lambda: stage(x, **{where: lambda t: formula(m, t)})  # noqa: E731
        with torch.no_grad():
            diff = (ours() - plain()).abs().max().item()
        params = [*stage.parameters(), *m.parameters()]
        a, r = _both_orders(ctx, step(ours, params), step(plain, params))
        gated_s, base_s = _both_orders(ctx, step(ours, params), step(lambda: stage(x), params))
        flops, flops_plain = _flops(ours), _flops(plain)
        base_flops = state["stage_flops"]
        paper, cite = PAPER.get(name, (None, None))
        time_pct, flops_pct = 100 * (gated_s - base_s) / base_s, 100 * (flops_plain - base_flops) / base_flops
        where_text = "replacing the 3x3 conv" if name in UNITS else "on the residual branch"
        return [
            Row("gates", f"{name} stage fwd+bwd", shape, attnzoo=a, reference=r,
                reference_name=f"{name} paper formula in plain torch, same weights, {where_text}",
                extra={"max_abs_diff": diff}),
            Row("gates", f"{name} overhead over stage (paper: {paper or '-'})", shape, unit="%",
                attnzoo=time_pct, reference=flops_pct,
                reference_name="forward FLOPs overhead of the plain formula, FlopCounterMode (convs and matmuls)",
                extra={"time_overhead_pct": time_pct, "gated_stage_s": gated_s, "stage_s": base_s,
                       "flops_overhead_pct": flops_pct, "flops": flops,
                       "flops_plain_formula": flops_plain, "stage_flops": base_flops,
                       "paper_flops_overhead": paper, "paper": cite}),
        ]

    yield Job("bottleneck, no gate fwd+bwd", shape, bare)
    for name in FORMULAS:
        yield Job(f"{name} stage fwd+bwd", shape, lambda name=name: gated(name))
    mb, mc, ms = _sizes(ctx)["memory"]
    yield Job("NonLocal fwd+bwd peak memory", f"B={mb} C={mc} H={ms} W={ms}", lambda: _memory(mb, mc, ms, ctx))


def _memory(B: int, C: int, S: int, ctx: Context) -> Row:
    spec = {"op": "attnzoo.bench.cases_gates:nonlocal_memory_op", "B": B, "C": C, "S": S,
            "device": str(ctx.device)}
    ours, plain = (measure_in_subprocess({**spec, "impl": impl}) for impl in ("attnzoo", "plain"))
    scores_mb = B * (S * S) ** 2 * torch.tensor([], dtype=torch.get_default_dtype()).element_size() / 2**20
    return Row("gates", "NonLocal fwd+bwd peak memory", f"B={B} C={C} H={S} W={S}", unit="MB",
               attnzoo=ours["peak_mb"], reference=plain["peak_mb"],
               reference_name="plain (HW)² softmax formula, same weights",
               extra={"method": ours["method"], "one_score_matrix_per_batch_mb": scores_mb / B,
                      "attnzoo_s": ours["seconds"], "reference_s": plain["seconds"]})


def nonlocal_memory_op(spec: dict[str, Any], device: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """`_memory.py` op: NonLocal fwd+bwd, attnzoo's module or the plain formula."""
    C = spec["C"]
    torch.manual_seed(0)
    m = gates.NonLocal(C, device=device).train()
    randomise_zeros(m)
    fn = m if spec["impl"] == "attnzoo" else (lambda t: FORMULAS["NonLocal"](m, t))

    def make(b: int, s: int) -> Callable[[], None]:
        x = torch.randn(b, C, s, s, device=device, requires_grad=True)

        def call() -> None:
            fn(x).sum().backward()
        return call

    return make(1, 4), make(spec["B"], spec["S"])
