"""Sequence part of the tour: date normalisation with an encoder-decoder Transformer.

Human-written dates in 12 formats ("Wednesday, 14 November 2023", "11/14/23",
"2023年11月14日", ...) -> ISO ``YYYY-MM-DD``, one character per token. Train and test
use disjoint calendar days (``attnzoo.data.is_test_date``). Decoding is the model's
cached greedy ``generate``. Cross-attention maps are recorded with ``AttentionRecorder``
during a teacher-forced forward pass (the decoder is fed ``<bos>`` + the true output,
so row j of a map is the query that produces output character j).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import date_vocabularies, encode_batch, format_date, formats_for_range, make_dates
from ..maps import generation_view
from ..record import AttentionRecorder
from ..transformer import Seq2SeqTransformer
from .common import DatesBudget, progress_bar, say, stopwatch, sync

START, END = date(1950, 1, 1), date(2049, 12, 31)
OUT_LEN = 10  # "YYYY-MM-DD"
_BATCH = 500
#: Formats whose digits are copied from fixed input positions: field -> first input position.
#: Output positions: year 0..3, month 5..6, day 8..9.
_COPY_FORMATS = {"mdy_slash": {"year": 6, "month": 0, "day": 3},
                 "dmy_dot": {"year": 6, "month": 3, "day": 0},
                 "ymd_slash": {"year": 0, "month": 5, "day": 8}}
_OUT_FIELDS = {"year": range(0, 4), "month": range(5, 7), "day": range(8, 10)}
_FIELD_LEN = {"year": 4, "month": 2, "day": 2}
#: The examples whose attention maps are drawn (first held-out day, rendered in each).
PLOT_FORMATS = ("weekday_long", "dmy_dot", "mdy_slash_short")
EOS = "<eos>"


def _encode(inputs: list[str], targets: list[str]) -> tuple[Tensor, Tensor]:
    sv, tv = date_vocabularies()
    return encode_batch(inputs, sv), encode_batch(targets, tv, add_bos=True)  # src+eos, bos+tgt+eos


def _trim(src: Tensor) -> Tensor:
    """Drop the all-padding columns at the right of a batch."""
    return src[:, : int((src != 0).sum(1).max())]


def build_model(seed: int, budget: DatesBudget) -> Seq2SeqTransformer:
    sv, tv = date_vocabularies()
    torch.manual_seed(seed)
    return Seq2SeqTransformer(len(sv), len(tv), d_model=budget.d_model, nhead=budget.nhead,
                              num_encoder_layers=budget.layers, num_decoder_layers=budget.layers,
                              dim_feedforward=budget.dim_feedforward, dropout=0.0, max_len=64,
                              pad_id=sv.pad_id)


@torch.no_grad()
def predict(model: Seq2SeqTransformer, inputs: list[str], device: torch.device) -> list[str]:
    """Greedy cached decoding of ``inputs``."""
    sv, tv = date_vocabularies()
    out = []
    for i in range(0, len(inputs), _BATCH):
        src = encode_batch(inputs[i:i + _BATCH], sv).to(device)
        tokens = model.generate(src, OUT_LEN + 1, tv.bos_id, tv.eos_id)
        out.extend(tv.decode(row) for row in tokens.cpu())
    return out


def scores(predictions: list[str], targets: list[str]) -> tuple[float, float]:
    """(exact match, character accuracy): the share of target characters predicted at their
    position (a missing character counts as wrong)."""
    exact = sum(p == t for p, t in zip(predictions, targets)) / len(targets)
    chars = sum(sum(a == b for a, b in zip(p, t)) for p, t in zip(predictions, targets))
    return exact, chars / sum(len(t) for t in targets)


def train_seq2seq(model: Seq2SeqTransformer, src: Tensor, tgt: Tensor, held_out: list[tuple[str, str]],
                  budget: DatesBudget, seed: int, device: torch.device) -> dict[str, Any]:
    """Teacher-forced cross-entropy, AdamW + one-cycle. History per epoch: mean train loss
    and greedy exact match on ``held_out``; seconds exclude those evaluations."""
    steps = len(src) // budget.batch_size
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.epochs * steps,
                                                pct_start=0.15)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    seconds = 0.0
    bar = progress_bar(budget.epochs * steps, "dates transformer")
    try:
        for epoch in range(budget.epochs):
            model.train()
            perm = torch.randperm(len(src), generator=gen).to(device)
            loss_sum = torch.zeros((), device=device)
            with stopwatch() as t:
                for i in range(steps):
                    idx = perm[i * budget.batch_size:(i + 1) * budget.batch_size]
                    s, g = _trim(src[idx]), tgt[idx]
                    logits = model(s, g[:, :-1])
                    loss = F.cross_entropy(logits.flatten(0, 1), g[:, 1:].flatten(), ignore_index=0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    loss_sum += loss.detach()
                    bar.update(1)
                    if not bar.disable and i % 10 == 0:
                        bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.4f}", refresh=False)
                sync(device)
            seconds += t[0]
            history["loss"].append(loss_sum.item() / steps)
            exact, _ = scores(predict(model, [p[0] for p in held_out], device), [p[1] for p in held_out])
            history["accuracy"].append(exact)
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", exact=f"{exact:.3f}")
            if bar.disable:  # no bar (stderr is not a terminal): one line per epoch instead
                say(f"dates   epoch {epoch + 1}/{budget.epochs}: train loss {history['loss'][-1]:.4f}, "
                    f"held-out exact match {exact:.3f}, {seconds:.0f} s training so far")
    finally:
        bar.close()
    return {"history": history, "seconds": seconds}


@torch.no_grad()
def record_attention(model: Seq2SeqTransformer, inputs: list[str], targets: list[str],
                     device: torch.device) -> dict[str, Tensor]:
    """Per-head attention maps (B, H, L, S) of every attention module during a teacher-forced
    forward pass, keyed by module name (``decoder_layers.0.multihead_attn`` ...)."""
    src, tgt = _encode(inputs, targets)
    model.eval()
    with AttentionRecorder(model, to_cpu=True) as rec:
        model(_trim(src).to(device), tgt[:, :-1].to(device))
    return {name: rec[name][0] for name in rec.names}


def alignment(model: Seq2SeqTransformer, days: list[date], device: torch.device) -> dict[str, Any]:
    """Where cross-attention looks, measured on formats whose output digits are copies of input
    digits at known positions. Per decoder layer, with the head-averaged map: the share of
    output digits whose most-attended input character is in the right field (year, month,
    day), and is exactly the copied character. Also the share of attention mass the
    "weekday_long" inputs put on the redundant weekday name."""
    layers = len(model.decoder_layers)
    field_hits, exact_hits, total = [0] * layers, [0] * layers, 0
    for fmt, starts in _COPY_FORMATS.items():
        inputs = [format_date(d, fmt) for d in days]
        maps = record_attention(model, inputs, [d.isoformat() for d in days], device)
        for li in range(layers):
            argmax = maps[f"decoder_layers.{li}.multihead_attn"].mean(1).argmax(-1)  # (B, L)
            for field, out_pos in _OUT_FIELDS.items():
                lo = starts[field]
                for k, j in enumerate(out_pos):
                    a = argmax[:, j]
                    field_hits[li] += int(((a >= lo) & (a < lo + _FIELD_LEN[field])).sum())
                    exact_hits[li] += int((a == lo + k).sum())
        total += len(days) * OUT_LEN - 2 * len(days)  # the two "-" are not copies
    inputs = [format_date(d, "weekday_long") for d in days]
    maps = record_attention(model, inputs, [d.isoformat() for d in days], device)
    mass = []
    for li in range(layers):
        w = maps[f"decoder_layers.{li}.multihead_attn"].mean(1)  # (B, L, S), rows sum to 1
        on_weekday = [float(w[b, :, : s.index(",") + 1].sum(-1).mean()) for b, s in enumerate(inputs)]
        mass.append(sum(on_weekday) / len(on_weekday))
    share = sum((s.index(",") + 1) / (len(s) + 1) for s in inputs) / len(inputs)
    return {"formats": list(_COPY_FORMATS), "field_per_layer": [h / total for h in field_hits],
            "exact_position_per_layer": [h / total for h in exact_hits],
            "weekday_mass_per_layer": mass, "weekday_char_share": share}


def run(budget: DatesBudget, seed: int, device: torch.device, fig_dir: Any) -> dict[str, Any]:
    """Train the Transformer, score it on held-out days, record and draw its attention."""
    train = make_dates(budget.n_train, seed=seed, split="train", start=START, end=END)
    test = make_dates(budget.n_test, seed=seed, split="test", start=START, end=END)
    src, tgt = (t.to(device) for t in _encode([p[0] for p in train], [p[1] for p in train]))
    model = build_model(seed, budget).to(device)
    r = train_seq2seq(model, src, tgt, test[: budget.n_curve], budget, seed, device)
    with stopwatch() as t_eval:
        preds = predict(model, [p[0] for p in test], device)
        sync(device)
    exact, char_acc = scores(preds, [p[1] for p in test])
    say(f"dates   transformer: exact match {exact:.3f}, character accuracy {char_acc:.3f}, "
        f"{r['seconds']:.1f} s")

    days = list(dict.fromkeys(date.fromisoformat(p[1]) for p in test))[: budget.n_per_format]
    per_format = {}
    for fmt in formats_for_range(START, END):
        inputs = [format_date(d, fmt) for d in days]
        per_format[fmt] = scores(predict(model, inputs, device), [d.isoformat() for d in days])[0]
    triples = [{"input": s, "target": g, "prediction": p} for (s, g), p in zip(test, preds)]
    wrong = {"year": 0, "month": 0, "day": 0, "malformed": 0}
    for x in triples:
        got, want = x["prediction"].split("-"), x["target"].split("-")
        if len(got) != 3 or [len(f) for f in got] != [4, 2, 2]:
            wrong["malformed"] += x["prediction"] != x["target"]
            continue
        for field, a, b in zip(("year", "month", "day"), got, want):
            wrong[field] += a != b
    result = {
        "exact_match": exact, "char_accuracy": char_acc, "n_test": len(test),
        "examples": triples[:12],
        "errors": [x for x in triples if x["prediction"] != x["target"]][:10],
        "n_errors": sum(x["prediction"] != x["target"] for x in triples),
        "wrong_fields": wrong,
        "per_format_exact_match": per_format,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": r["seconds"], "decode_seconds": t_eval[0],
        "history": r["history"],
        "model": {"d_model": budget.d_model, "nhead": budget.nhead, "encoder_layers": budget.layers,
                  "decoder_layers": budget.layers, "dim_feedforward": budget.dim_feedforward, "dropout": 0.0},
        "train": {"n_train": budget.n_train, "epochs": budget.epochs, "batch_size": budget.batch_size,
                  "lr": budget.lr, "seed": seed},
        "cross_attention": alignment(model, days, device),
    }
    result["figures"] = _figures(model, days[0], device, fig_dir, result["cross_attention"], r["history"])
    return result


def _figures(model: Seq2SeqTransformer, day: date, device: torch.device, fig_dir: Any,
             align: dict[str, Any], history: dict[str, list[float]]) -> dict[str, Any]:
    from .. import viz

    inputs = [format_date(day, f) for f in PLOT_FORMATS]
    target = day.isoformat()
    maps = record_attention(model, inputs, [target] * len(inputs), device)
    layers = len(model.decoder_layers)
    best = max(range(layers), key=lambda i: align["field_per_layer"][i])  # the clearest picture
    out_labels = list(target) + [EOS]
    figs: dict[str, Any] = {"cross": [], "best_layer": best + 1}
    viz.plot_training_curves({"transformer": history}, fig_dir / "dates_curves.png",
                             title="Dates: train loss and held-out exact match per epoch")
    figs["curves"] = "dates_curves.png"
    for ex, src in enumerate(inputs):  # the first example: every head of every layer
        keys = list(src) + [EOS]
        for li in range(layers) if ex == 0 else [best]:
            w = maps[f"decoder_layers.{li}.multihead_attn"][ex, :, :, : len(keys)]  # (H, L, S)
            w = w if ex == 0 else w.mean(0)  # the others: the mean over heads
            name = f"dates_cross_attention_ex{ex + 1}_layer{li + 1}.png"
            title = (f"Cross-attention, decoder layer {li + 1}: {src!r} -> {target}" if ex == 0
                     else f"Cross-attn, layer {li + 1}, head mean")
            viz.plot_attention(w, fig_dir / name, query_labels=out_labels, key_labels=keys, title=title)
            figs["cross"].append({"file": name, "input": src, "layer": li + 1, "per_head": ex == 0})
    keys = list(inputs[0]) + [EOS]
    w = maps[f"encoder_layers.{layers - 1}.self_attn"][0, :, : len(keys), : len(keys)]
    viz.plot_attention(w, fig_dir / "dates_encoder_self_attention.png", query_labels=keys, key_labels=keys,
                       title=f"Encoder self-attention, layer {layers}: {inputs[0]!r}")
    figs["encoder_self"] = "dates_encoder_self_attention.png"
    w = maps[f"decoder_layers.{layers - 1}.self_attn"][0].mean(0)
    viz.plot_attention(w, fig_dir / "dates_decoder_self_attention.png", query_labels=out_labels,
                       key_labels=["<bos>"] + list(target),
                       title=f"Decoder self-attn, layer {layers}, head mean")
    figs["decoder_self"] = "dates_decoder_self_attention.png"
    sv, tv = date_vocabularies()
    src = inputs[0]
    generation_view(  # the interactive page: what each generated character looked at
        model, encode_batch([src], sv).to(device), fig_dir / "dates_attention_view.html", bos_id=tv.bos_id,
        eos_id=tv.eos_id, max_new_tokens=OUT_LEN + 1, src_tokens=list(src) + [EOS],
        token_label=lambda i: tv.decode([i]) or EOS,
        title=f"Cross-attention of each generated character, decoded with the cache: {src!r}")
    figs["view"] = {"file": "dates_attention_view.html",
                    "title": "Dates: cross-attention of each generated character (pick a layer, head, token)"}
    return figs
