"""The gate league (``attnzoo demo --only gates``): which CNN gate helps, and at what cost.

Every kind that ``add_attention`` accepts (``retrofit.KINDS``: se, channel, spatial, cbam,
eca, ese, ge, coord, bam, triplet, srm, gc, nonlocal, simam) is added with
``add_attention(model, kind, where="blocks")`` to the small ResNet of ``resnet.py``: one
gate on the residual branch of each of its 3 basic blocks, before the addition. No keyword
is passed: every gate keeps its own defaults (reduction, kernel size, ...) and its default
init. The conv units sk and splat replace a convolution instead of gating one and are
refused by ``add_attention``, so they are not in the league.

The task, data and training are the ResNet part's (cluttered digits, ``train_classifier``);
per seed every variant starts from the same weights of the shared layers and sees the same
batches in the same order as the plain network, so each gate is compared with the plain
network seed by seed (``stats.paired_difference``, worded by the rule of ``stats.py``).

Cost of each variant, beside its accuracy:

* parameters, and FLOPs of the forward pass of one batch (``batch_size`` images of
  1x32x32, eval mode) as ``torch.utils.flop_counter.FlopCounterMode`` counts them: it
  counts convolutions and matrix products only, so pooling, sigmoid, softmax and
  elementwise products add 0 (``FLOPS_NOTE``);
* CPU time of one batch's forward and backward (train mode, one thread) relative to the
  plain network: every variant timed in the same process, interleaved round by round
  (``time_rounds`` rounds of 3 passes each), the median per variant.

Not part of the default tour (it would take several times its CPU budget): the default
report shows the committed league (``league.json`` beside this file) instead.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..retrofit import KINDS
from .common import GatesBudget, say
from .resnet import build_resnet, cluttered_data
from .stats import mean_std, paired_difference
from .vision import train_classifier

__all__ = ["PLAIN", "VARIANTS", "FLOPS_NOTE", "count_flops", "time_ratios", "run"]

#: The plain network's name in the league; the others are named by their kind.
PLAIN = "plain"
VARIANTS: tuple[str, ...] = (PLAIN, *KINDS)
FLOPS_NOTE = ("FLOPs as torch.utils.flop_counter.FlopCounterMode counts them: convolutions and matrix products "
              "only (a multiply-add is 2 FLOPs); pooling, sigmoid, softmax and elementwise products count as 0, "
              "so gates made mostly of those (simam: none counted at all) show little or no extra FLOPs although "
              "they do cost time")


def build(name: str, seed: int, widths: tuple[int, ...]) -> nn.Module:
    """The small ResNet of ``seed``; with ``name``'s gates added per block unless ``name`` is plain."""
    return build_resnet(seed, widths, None if name == PLAIN else name, where="blocks")


@torch.no_grad()
def count_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of ``model(x)`` in eval mode as ``FlopCounterMode`` counts them (restores the mode)."""
    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was)
    return int(counter.get_total_flops())


def time_ratios(models: dict[str, nn.Module], x: Tensor, y: Tensor, rounds: int,
                reps: int = 3) -> dict[str, dict[str, float]]:
    """Median seconds of one forward+backward on (``x``, ``y``) per model (train mode), measured
    interleaved: each round times every model ``reps`` times in turn. Returns
    ``{name: {"ms": median milliseconds, "ratio": median / the plain network's}}``."""
    times: dict[str, list[float]] = {n: [] for n in models}
    for m in models.values():
        m.train()
        F.cross_entropy(m(x), y).backward()  # warm-up: allocations, first-call paths
    for _ in range(rounds):
        for name, m in models.items():
            m.zero_grad(set_to_none=True)
            start = time.perf_counter()
            for _ in range(reps):
                F.cross_entropy(m(x), y).backward()
            times[name].append((time.perf_counter() - start) / reps)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {n: {"ms": 1000.0 * t, "ratio": t / med[PLAIN]} for n, t in med.items()}


def run(budget: GatesBudget, seed: int, device: torch.device, fig_dir: Any) -> dict[str, Any]:
    """Train every variant for ``budget.n_seeds`` seeds; accuracy, paired differences with
    the plain network, parameters, FLOPs and relative CPU time of each."""
    from .. import find_attention

    seeds = [seed + i for i in range(budget.n_seeds)]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    first: tuple[Tensor, Tensor] | None = None
    for s in seeds:
        train, test = cluttered_data(budget.n_train, budget.n_test, s, device)
        first = first or (train[0][:budget.batch_size].cpu(), train[1][:budget.batch_size].cpu())
        for name in VARIANTS:
            model = build(name, s, budget.widths).to(device)
            r = train_classifier(model, train, test, budget, s, f"gates {name:<8} seed {s}")
            runs[name].append(r)
            say(f"gates   {name:<8} seed {s}: test accuracy {r['accuracy']:.3f}, {r['seconds']:.1f} s")
    assert first is not None
    x, y = first
    fresh = {n: build(n, seeds[0], budget.widths) for n in VARIANTS}  # CPU, untrained: the costs
    say("gates   timing one batch's forward and backward on the CPU, every variant interleaved")
    threads = torch.get_num_threads()
    timing = time_ratios(fresh, x, y, budget.time_rounds)
    base_params = sum(p.numel() for p in fresh[PLAIN].parameters())
    base_flops = count_flops(fresh[PLAIN], x)
    models = {}
    for name in VARIANTS:
        rs, model = runs[name], fresh[name]
        accs = [r["accuracy"] for r in rs]
        params, flops = sum(p.numel() for p in model.parameters()), count_flops(model, x)
        models[name] = {
            "kind": None if name == PLAIN else name, "gates": len(find_attention(model)),
            "params": params, "extra_params": params - base_params,
            "flops": flops, "extra_flops": flops - base_flops, "extra_flops_share": flops / base_flops - 1.0,
            "time_ms": timing[name]["ms"], "time_ratio": timing[name]["ratio"],
            "accuracies": accs, "accuracy_mean": mean_std(accs)[0], "accuracy_std": mean_std(accs)[1],
            "final_train_loss_mean": mean_std([r["history"]["loss"][-1] for r in rs])[0],
            "test_accuracy_per_epoch_mean": [sum(v) / len(v) for v in zip(*(r["history"]["accuracy"] for r in rs))],
            "seconds": sum(r["seconds"] for r in rs) / len(rs), "seconds_per_seed": [r["seconds"] for r in rs],
        }
    comparisons = {f"{n}_vs_{PLAIN}": paired_difference(models[n]["accuracies"], models[PLAIN]["accuracies"])
                   for n in VARIANTS if n != PLAIN}
    ranking = sorted(VARIANTS, key=lambda n: -models[n]["accuracy_mean"])
    return {
        "task": {"n_train": budget.n_train, "n_test": budget.n_test, "epochs": budget.epochs,
                 "batch_size": budget.batch_size, "lr": budget.lr, "widths": list(budget.widths),
                 "where": "blocks", "gate_kwargs": {}, "init": "default"},
        "seeds": seeds, "variants": list(VARIANTS), "ranking": ranking, "models": models,
        "comparisons": comparisons,
        "costs": {"flops_batch": list(x.shape), "flops_note": FLOPS_NOTE, "time_rounds": budget.time_rounds,
                  "time_reps": 3, "time_threads": threads, "time_device": "cpu"},
        "figures": {},
    }
