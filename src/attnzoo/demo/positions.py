"""Positions part of the tour: what position schemes buy in a character-level language model.

The data (``attnzoo.data.shakespeare``): *Tiny Shakespeare*, 65 distinct characters, the
usual split (first 90 % of the characters for training, last 10 % for validation).

The same small causal Transformer (``charlm.CharLM``) is trained at a context of
``budget.context`` characters with each position scheme of ``charlm.SCHEMES``: learned
absolute, sinusoidal, RoPE, ALiBi and none (NoPE). Same initial weights of the shared
layers, same batches (random windows of the training text, drawn by the seed), same
fixed number of steps for every scheme; several seeds.

Each model is then scored on the SAME validation characters at evaluation contexts of 1,
2, 4 and 8 times the training context: ``budget.n_windows`` windows at fixed places of the
validation text; in each, only the last ``budget.scored`` predictions count, so at context
``C`` every scored character has between ``C - scored`` and ``C - 1`` characters before it
(beyond the training length for ``C`` > ``context``). Learned absolute positions have no
table rows beyond the training context: they are marked not applicable there (None), never
extrapolated. Loss in bits per character (base-2 cross-entropy).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.shakespeare import load_tiny_shakespeare, shakespeare_vocab
from .charlm import CharLM, bits_per_char, unigram_bits, window_ends
from .common import PositionsBudget, progress_bar, say, stopwatch, sync
from .findings import POSITION_NAMES
from .stats import mean_std, paired_difference

#: One colour per scheme in the figure.
COLORS = {"learned": "#1f77b4", "sinusoidal": "#ff7f0e", "rope": "#2ca02c", "alibi": "#d62728", "nope": "#7f7f7f"}


def build_model(scheme: str, seed: int, budget: PositionsBudget) -> CharLM:
    """For one ``seed`` the shared layers start from the same weights in every scheme."""
    torch.manual_seed(seed)
    return CharLM(scheme, len(shakespeare_vocab()), context=budget.context, d_model=budget.d_model,
                  nhead=budget.nhead, layers=budget.layers)


def train(model: CharLM, ids: Tensor, budget: PositionsBudget, seed: int, desc: str) -> dict[str, Any]:
    """AdamW + one-cycle for ``budget.steps`` steps on random windows of ``ids`` (the same
    windows for every scheme of one seed). History: mean training loss (bits per character)
    over each tenth of the steps; seconds: the training loop."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.steps, pct_start=0.1)
    chunk = max(1, budget.steps // 10)
    offsets = torch.arange(budget.context)  # (L,)
    history: dict[str, list[float]] = {"loss": []}
    loss_sum, n_sum = torch.zeros((), device=device), 0
    bar = progress_bar(budget.steps, desc)
    model.train()
    try:
        with stopwatch() as t:
            for step in range(budget.steps):
                starts = torch.randint(0, len(ids) - budget.context, (budget.batch_size,), generator=gen)
                at = starts[:, None] + offsets  # (B, L)
                x, y = ids[at].to(device), ids[at + 1].to(device)  # (B, L) inputs, next characters
                logits = model(x)  # (B, L, V)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum, n_sum = loss_sum + loss.detach(), n_sum + 1
                if (step + 1) % chunk == 0 or step + 1 == budget.steps:
                    history["loss"].append(loss_sum.item() / n_sum / math.log(2.0))
                    loss_sum, n_sum = torch.zeros((), device=device), 0
                    bar.set_postfix(bits=f"{history['loss'][-1]:.3f}")
                bar.update(1)
            sync(device)
    finally:
        bar.close()
    return {"history": history, "seconds": t[0]}


def evaluate(model: CharLM, val: Tensor, ends: Tensor, budget: PositionsBudget) -> list[float | None]:
    """Bits per character at each of ``budget.eval_contexts`` (None where not applicable)."""
    return [bits_per_char(model, val, ends, c, budget.scored) for c in budget.eval_contexts]


def _summary(per_seed: list[list[float | None]]) -> dict[str, Any]:
    """Per context: the values over seeds, their mean and sd (None where not applicable)."""
    by_context = [list(v) for v in zip(*per_seed)]  # (contexts, seeds)
    values = [None if None in v else v for v in by_context]
    stats = [None if v is None else mean_std(v) for v in values]
    return {"bits": values, "bits_mean": [None if s is None else s[0] for s in stats],
            "bits_std": [None if s is None else s[1] for s in stats]}


def comparisons(schemes: dict[str, dict[str, Any]], contexts: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Paired over seeds (``stats.paired_difference``; points = 0.01 bits per character):

    * ``{s}_vs_nope``: scheme ``s`` minus no positions, at the training context;
    * ``{s}_longest_vs_train``: scheme ``s`` at the longest evaluation context minus at the
      training context (positive = worse beyond the training length);
    * ``alibi_vs_{s}_longest``: ALiBi minus ``s`` at the longest context.

    Negative = fewer bits = better. Pairs with a not-applicable side are left out."""
    out: dict[str, dict[str, Any]] = {}
    bits = {s: r["bits"] for s, r in schemes.items()}
    if "nope" in bits:
        for s in (s for s in bits if s != "nope"):
            out[f"{s}_vs_nope"] = paired_difference(bits[s][0], bits["nope"][0])
    for s, b in bits.items():
        if b[-1] is not None and len(contexts) > 1:
            out[f"{s}_longest_vs_train"] = paired_difference(b[-1], b[0])
    if "alibi" in bits:
        for s in (s for s in bits if s != "alibi" and bits[s][-1] is not None):
            out[f"alibi_vs_{s}_longest"] = paired_difference(bits["alibi"][-1], bits[s][-1])
    return out


def run(budget: PositionsBudget, seed: int, device: torch.device, fig_dir: Any) -> dict[str, Any]:
    """Train every scheme for ``budget.n_seeds`` seeds; score all at every evaluation context."""
    from .. import viz

    train_ids, val = load_tiny_shakespeare("train"), load_tiny_shakespeare("val")
    val_dev = val.to(device)
    ends = window_ends(len(val), budget.n_windows, max(budget.eval_contexts)).to(device)
    seeds = [seed + i for i in range(budget.n_seeds)]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in budget.schemes}
    for s in seeds:
        for scheme in budget.schemes:
            model = build_model(scheme, s, budget).to(device)
            r = train(model, train_ids, budget, s, f"positions {scheme:<10} seed {s}")
            with stopwatch() as t:
                r["bits"] = evaluate(model, val_dev, ends, budget)
            r["eval_seconds"], r["params"] = t[0], sum(p.numel() for p in model.parameters())
            runs[scheme].append(r)
            shown = ", ".join(f"{c}: {'n/a' if b is None else f'{b:.3f}'}" for c, b in zip(budget.eval_contexts,
                                                                                          r["bits"]))
            say(f"positions {scheme:<10} seed {s}: validation bits/char at context {shown}; "
                f"train {r['history']['loss'][-1]:.3f}, {r['seconds']:.1f} s")
    schemes = {}
    for scheme, rs in runs.items():
        schemes[scheme] = {**_summary([r["bits"] for r in rs]), "params": rs[0]["params"],
                           "train_bits_mean": mean_std([r["history"]["loss"][-1] for r in rs])[0],
                           "seconds": sum(r["seconds"] for r in rs) / len(rs),
                           "eval_seconds": sum(r["eval_seconds"] for r in rs) / len(rs)}
    contexts = tuple(budget.eval_contexts)
    result = {
        "task": {"n_train_chars": len(train_ids), "n_val_chars": len(val), "vocab": len(shakespeare_vocab()),
                 "context": budget.context, "eval_contexts": list(contexts), "n_windows": budget.n_windows,
                 "scored": budget.scored, "scored_chars": budget.n_windows * budget.scored,
                 "unigram_bits": unigram_bits(train_ids, val, len(shakespeare_vocab())),
                 "d_model": budget.d_model, "nhead": budget.nhead, "layers": budget.layers,
                 "steps": budget.steps, "batch_size": budget.batch_size, "lr": budget.lr},
        "seeds": seeds, "schemes": schemes, "comparisons": comparisons(schemes, contexts),
        "histories": {s: [r["history"] for r in rs] for s, rs in runs.items()},
    }
    n = len(seeds)
    label = {s: POSITION_NAMES[s] + (f" (n/a beyond {budget.context})" if m["bits_mean"][-1] is None else "")
             for s, m in schemes.items()}
    viz.plot_lines_with_spread(
        {label[s]: (m["bits_mean"], m["bits_std"]) for s, m in schemes.items()}, contexts,
        fig_dir / "positions_context.png",
        xlabel="evaluation context (characters; the models were trained at "
               f"{budget.context})", ylabel="validation loss (bits per character)",
        title=f"Loss beyond the training length, mean ± sd over {n} seed{'s' if n > 1 else ''}",
        colors={label[s]: COLORS[s] for s in schemes}, vline=budget.context, log2_x=True)
    result["figures"] = {"context": "positions_context.png"}
    return result
