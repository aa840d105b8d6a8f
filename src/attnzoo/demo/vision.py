"""Vision part of the tour: one small CNN trained three ways on cluttered handwritten digits.

The task (``attnzoo.data.make_cluttered_digits``): a real 8x8 UCI digit, upscaled to
16x16, at a random position on a 32x32 canvas among 4x4 fragments of other digits.
The SAME network is trained with no attention ("baseline"), a Squeeze-and-Excitation
gate after each conv stage ("se") and a CBAM block after each stage ("cbam"), with the
same data, batch order, initial weights of the shared layers and number of steps.

Stages (conv -> BatchNorm -> ReLU -> [attention]); the head averages the last map:

    stage 1: 5x5 conv, stride 2,  1 -> 16 channels, 32x32 -> 16x16
    stage 2: 3x3 conv, stride 2, 16 -> 32 channels, 16x16 ->  8x8
    stage 3: 3x3 conv, stride 1, 32 -> 64 channels,  8x8  ->  8x8

SE and CBAM use reduction 4 (hidden widths 4, 8, 16) and CBAM's 7x7 spatial kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ClutteredDigits, make_cluttered_digits
from ..factory import create_attention
from ..record import AttentionRecorder
from .common import VisionBudget, mean_histories, progress_bar, say, stopwatch, sync
from .stats import mean_std, paired_difference

MODELS = ("baseline", "se", "cbam")
_ATTENTION = {"baseline": None, "se": "se", "cbam": "cbam"}
_KERNELS, _STRIDES = (5, 3, 3), (2, 2, 1)
_EVAL_BATCH = 500


class SmallCNN(nn.Module):
    """Three conv stages, optional attention after each, global average pool, linear head."""

    def __init__(self, attention: str | None, widths: tuple[int, ...] = (16, 32, 64),
                 reduction: int = 4, n_classes: int = 10) -> None:
        super().__init__()
        stages, c_in = [], 1
        for width, k, s in zip(widths, _KERNELS, _STRIDES):
            stage = nn.Sequential()
            stage.add_module("conv", nn.Conv2d(c_in, width, k, stride=s, padding=k // 2, bias=False))
            stage.add_module("bn", nn.BatchNorm2d(width))
            stage.add_module("act", nn.ReLU())
            if attention is not None:
                stage.add_module("attn", create_attention(attention, width, reduction=reduction))
            stages.append(stage)
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, 32, 32) -> logits (B, n_classes)."""
        return self.head(self.stages(x).mean((2, 3)))


def build_model(name: str, seed: int, budget: VisionBudget) -> SmallCNN:
    """``name`` in MODELS; the layers all three share start from the same weights for ``seed``."""
    torch.manual_seed(seed)
    shared = SmallCNN(None, budget.widths, budget.reduction).state_dict()
    model = SmallCNN(_ATTENTION[name], budget.widths, budget.reduction)
    missing, unexpected = model.load_state_dict(shared, strict=False)
    assert not unexpected and all(".attn." in k for k in missing)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy, in eval mode (restores the previous mode)."""
    was = model.training
    model.eval()
    correct = sum(int((model(images[i:i + _EVAL_BATCH]).argmax(1) == labels[i:i + _EVAL_BATCH]).sum())
                  for i in range(0, len(images), _EVAL_BATCH))
    model.train(was)
    return correct / len(images)


def train_classifier(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                     budget: VisionBudget, seed: int, desc: str) -> dict[str, Any]:
    """AdamW + one-cycle schedule. Returns the history (mean train loss and test accuracy
    per epoch), the final test accuracy and the training seconds (evaluation excluded)."""
    x, y = train
    device = x.device
    steps = len(x) // budget.batch_size  # drop the last partial batch: BatchNorm sees full batches
    gen = torch.Generator().manual_seed(seed)  # the batch order: the same for every model
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.epochs * steps)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    seconds = 0.0
    bar = progress_bar(budget.epochs * steps, desc)
    try:
        for _ in range(budget.epochs):
            model.train()
            perm = torch.randperm(len(x), generator=gen).to(device)
            loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
            with stopwatch() as t:
                for i in range(steps):
                    idx = perm[i * budget.batch_size:(i + 1) * budget.batch_size]
                    logits = model(x[idx])
                    loss = F.cross_entropy(logits, y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    loss_sum += loss.detach() * len(idx)
                    correct += (logits.argmax(1) == y[idx]).sum()
                    seen += len(idx)
                    bar.update(1)
                    if not bar.disable and i % 10 == 0:
                        bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                        acc=f"{correct.item() / seen:.3f}", refresh=False)
                sync(device)
            seconds += t[0]
            history["loss"].append(loss_sum.item() / seen)
            history["accuracy"].append(evaluate(model, *test))
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", test_acc=f"{history['accuracy'][-1]:.3f}")
    finally:
        bar.close()
    return {"history": history, "accuracy": history["accuracy"][-1], "seconds": seconds}


def box_masks(boxes: Tensor, canvas: int, size: int) -> Tensor:
    """(N, size, size) bool: the pixel boxes (top, left, bottom, right) of a ``canvas``-wide
    image scaled to a ``size``-wide map (cells the box touches, rounded outwards)."""
    scale = size / canvas
    top, left = (boxes[:, 0] * scale).floor(), (boxes[:, 1] * scale).floor()
    bottom, right = (boxes[:, 2] * scale).ceil(), (boxes[:, 3] * scale).ceil()
    r = torch.arange(size, device=boxes.device, dtype=torch.float64)
    rows = (r >= top[:, None].double()) & (r < bottom[:, None].double())
    cols = (r >= left[:, None].double()) & (r < right[:, None].double())
    return rows[:, :, None] & cols[:, None, :]


@torch.no_grad()
def record_gates(model: nn.Module, images: Tensor, suffix: str) -> list[Tensor]:
    """Gates of every module whose name ends with ``suffix``, one (N, ...) CPU tensor per stage."""
    model.eval()
    with AttentionRecorder(model, include=lambda name, _: name.endswith(suffix), to_cpu=True) as rec:
        for i in range(0, len(images), _EVAL_BATCH):
            model(images[i:i + _EVAL_BATCH])
    return [torch.cat(rec[name]) for name in rec.names]


def localization_ratios(model: nn.Module, data: ClutteredDigits, images: Tensor) -> list[tuple[float, float]]:
    """Per stage, two ratios of spatial-gate means, each averaged over test images:

    * box: inside the digit's box (scaled to the gate's resolution) / over the whole
      map. 1.0 = no localization; the box is a quarter of the canvas, so at most 4.
    * ink: on inked cells inside the box / on inked cells outside it (fragments), i.e.
      digit strokes against clutter strokes; 1.0 = the gate cannot tell them apart.
      Images without ink outside the box are skipped.
    """
    out = []
    for gate in record_gates(model, images, ".spatial"):
        g = gate[:, 0].double()  # (N, h, w)
        inside = box_masks(data.boxes, images.shape[-1], g.shape[-1])
        box = (g * inside).sum((1, 2)) / inside.sum((1, 2)) / g.mean((1, 2))
        ink = F.adaptive_max_pool2d(data.images, g.shape[-2:])[:, 0] > 0  # (N, h, w)
        digit, clutter = ink & inside, ink & ~inside
        ok = (clutter.sum((1, 2)) > 0) & (digit.sum((1, 2)) > 0)
        on_digit = (g * digit).sum((1, 2)) / digit.sum((1, 2)).clamp(min=1)
        on_clutter = (g * clutter).sum((1, 2)) / clutter.sum((1, 2)).clamp(min=1)
        # no image with ink on both sides (never seen with >= 100 images): no evidence either way
        ratio = float((on_digit / on_clutter)[ok].mean()) if ok.any() else 1.0
        out.append((float(box.mean()), ratio))
    return out


def channel_profiles(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[list[np.ndarray], list[float]]:
    """Per stage: the mean SE gate per class and channel (10, C), and how much the gates
    vary from image to image (std over images, averaged over channels)."""
    profiles, image_std = [], []
    for gate in record_gates(model, images, ".attn"):
        g = gate.flatten(1).double()  # (N, C)
        profiles.append(np.stack([g[labels.cpu() == c].mean(0).numpy() for c in range(10)]))
        image_std.append(float(g.std(0).mean()))
    return profiles, image_std


def class_spread(profile: np.ndarray) -> float:
    """How class-specific a stage's gates are: std over classes, averaged over channels."""
    return float(profile.std(axis=0).mean())


def run(budget: VisionBudget, seed: int, device: torch.device, fig_dir: Any) -> dict[str, Any]:
    """Train all models for ``budget.n_seeds`` seeds, measure them, draw the figures."""
    from .. import viz

    seeds = [seed + i for i in range(budget.n_seeds)]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODELS}
    loc: list[list[tuple[float, float]]] = []
    keep: dict[str, Any] = {}
    for s in seeds:
        train = make_cluttered_digits(budget.n_train, split="train", seed=s)
        test = make_cluttered_digits(budget.n_test, split="test", seed=s)
        xtr, ytr = train.images.to(device), train.labels.to(device)
        xte, yte = test.images.to(device), test.labels.to(device)
        for name in MODELS:
            model = build_model(name, s, budget).to(device)
            r = train_classifier(model, (xtr, ytr), (xte, yte), budget, s, f"vision {name:<8} seed {s}")
            r["params"] = sum(p.numel() for p in model.parameters())
            r["train_accuracy"] = evaluate(model, xtr, ytr)
            runs[name].append(r)
            say(f"vision  {name:<8} seed {s}: test accuracy {r['accuracy']:.3f}, "
                f"train loss {r['history']['loss'][-1]:.3f}, {r['seconds']:.1f} s")
            if name == "cbam":
                loc.append(localization_ratios(model, test, xte))
            if s == seed and name != "baseline":
                keep[name] = model
        if s == seed:
            keep["test"], keep["xte"] = test, xte

    models = {}
    for name in MODELS:
        accs = [r["accuracy"] for r in runs[name]]
        m, sd = mean_std(accs)
        secs = [r["seconds"] for r in runs[name]]
        models[name] = {"accuracy_mean": m, "accuracy_std": sd, "accuracies": accs,
                        "train_accuracy_mean": mean_std([r["train_accuracy"] for r in runs[name]])[0],
                        "params": runs[name][0]["params"], "seconds": sum(secs) / len(secs),
                        "seconds_per_seed": secs,
                        "final_train_loss_mean": mean_std([r["history"]["loss"][-1] for r in runs[name]])[0]}
    base = models["baseline"]["accuracies"]
    loc_arr = np.array(loc)  # (seeds, stages, [box, ink])
    test, xte = keep["test"], keep["xte"]
    profiles, image_std = channel_profiles(keep["se"], xte, test.labels)
    sizes = [int(g.shape[-1]) for g in record_gates(keep["cbam"], xte[:1], ".spatial")]
    result = {
        "task": {"canvas": int(xte.shape[-1]), "digit_size": 16, "n_fragments": 4, "fragment_size": 4,
                 "n_train": budget.n_train, "n_test": budget.n_test, "epochs": budget.epochs,
                 "batch_size": budget.batch_size, "lr": budget.lr, "widths": list(budget.widths),
                 "reduction": budget.reduction},
        "seeds": seeds,
        "models": models,
        "comparisons": {f"{n}_vs_baseline": paired_difference(models[n]["accuracies"], base) for n in ("se", "cbam")},
        "cbam_localization_ratio": float(loc_arr[:, 0, 0].mean()),
        "cbam_localization_ratio_std": mean_std(loc_arr[:, 0, 0].tolist())[1],
        "cbam_localization_stage": 1,
        "cbam_localization_per_stage": [
            {"stage": i + 1, "resolution": sizes[i], "mean": float(loc_arr[:, i, 0].mean()),
             "std": mean_std(loc_arr[:, i, 0].tolist())[1], "per_seed": loc_arr[:, i, 0].tolist(),
             "digit_vs_clutter_ink_mean": float(loc_arr[:, i, 1].mean()),
             "digit_vs_clutter_ink_std": mean_std(loc_arr[:, i, 1].tolist())[1]}
            for i in range(loc_arr.shape[1])],
        "se_gate_class_spread_per_stage": [class_spread(p) for p in profiles],
        "se_gate_mean_per_stage": [float(p.mean()) for p in profiles],
        "se_gate_image_std_per_stage": image_std,
        "histories": {n: [r["history"] for r in runs[n]] for n in MODELS},
    }
    result["figures"] = _figures(viz, fig_dir, budget, runs, models, keep, profiles, seed)
    return result


def _figures(viz: Any, fig_dir: Any, budget: VisionBudget, runs: dict, models: dict, keep: dict,
             profiles: list[np.ndarray], seed: int) -> dict[str, str]:
    figs = {}
    n_seeds = len(runs["baseline"])
    seeds = f"{n_seeds} seed" + ("s" if n_seeds != 1 else "")
    colors = {n: viz.model_color(n) for n in MODELS}
    viz.plot_accuracy_bars({n: (models[n]["accuracy_mean"], models[n]["accuracy_std"]) for n in MODELS},
                           fig_dir / "vision_accuracy.png", colors=colors,
                           title=f"Cluttered digits: test accuracy (mean ± sd, {seeds})")
    figs["accuracy"] = "vision_accuracy.png"
    viz.plot_training_curves(mean_histories({n: [r["history"] for r in runs[n]] for n in MODELS}),
                             fig_dir / "vision_curves.png", colors=colors,
                             title=f"Cluttered digits: train loss and test accuracy per epoch (mean of {seeds})")
    figs["curves"] = "vision_curves.png"
    last = len(profiles)
    for stage in range(1, last + 1):
        name = f"se_gates_stage{stage}.png"
        viz.plot_channel_profile(profiles[stage - 1], fig_dir / name, labels=[str(c) for c in range(10)],
                                 vmin=0.0, vmax=1.0,
                                 title=f"SE model (seed {seed}), stage {stage}: mean gate per class and channel")
        figs[f"se_stage{stage}"] = name
    test, xte, model = keep["test"], keep["xte"], keep["cbam"]
    k = min(budget.n_overlay, len(xte))
    with torch.no_grad():
        model.eval()
        pred = model(xte[:k]).argmax(1).cpu()
    gates = record_gates(model, xte[:k], ".spatial")
    titles = [f"digit {int(t)}, predicted {int(p)}" for t, p in zip(test.labels[:k], pred)]
    for stage in range(1, len(gates) + 1):
        name = f"cbam_spatial_stage{stage}.png"
        viz.plot_spatial_overlay(test.images[:k], gates[stage - 1], fig_dir / name, boxes=test.boxes[:k],
                                 titles=titles, ncols=2, vmin=0.0, vmax=1.0, side_by_side=True)
        figs[f"cbam_stage{stage}"] = name
    return figs
