"""ResNet part of the tour: SE and CBAM added to an existing network with ``add_attention``.

The survey's SENet section: SE is not a network of its own but is combined with existing
CNNs such as ResNet, and one can, crudely, add it after every convolution, at the risk of
overfitting. This part tests that on the cluttered digits (``vision.py``'s task): a small
ResNet of basic blocks, written with no attention in it, is trained plain and with SE or
CBAM put in by ``attnzoo.add_attention``

* ``where="blocks"``: one gate on the residual branch of every block, before the addition
  (the SE-ResNet placement);
* ``where="convs"``: a gate after every convolution (the survey's "after every conv").

Every variant starts from the same weights of the shared layers, sees the same batches and
the same budget; train AND test accuracy are reported, so the gap shows overfitting.

Network (BatchNorm and ReLU after each conv; ``widths`` = (16, 32, 64)):

    stem:    3x3 conv, stride 2, 1 -> 16 channels, 32x32 -> 16x16
    block 1: basic block, 16 -> 16, stride 1, 16x16
    block 2: basic block, 16 -> 32, stride 2, 16x16 -> 8x8 (1x1 conv shortcut)
    block 3: basic block, 32 -> 64, stride 2,  8x8 -> 4x4 (1x1 conv shortcut)
    head:    global average pool -> linear, 10 classes
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..data import make_cluttered_digits
from .common import ResNetBudget, mean_histories, say
from .stats import mean_std, paired_difference
from .vision import evaluate, train_classifier

#: variant -> (kind, where) for ``add_attention``; None = the plain ResNet.
VARIANTS: dict[str, tuple[str, str] | None] = {
    "resnet": None,
    "se_blocks": ("se", "blocks"),
    "se_convs": ("se", "convs"),
    "cbam_blocks": ("cbam", "blocks"),
    "cbam_convs": ("cbam", "convs"),
}


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convs on the residual branch, identity (or a strided
    1x1 conv) on the shortcut; (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """Stem, one basic block per width, global average pool, linear head (no attention)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        blocks, c_in = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(c_in, width, stride=1 if i == 0 else 2))
            c_in = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, 32, 32) -> logits (B, n_classes)."""
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, 16, 16)
        return self.fc(self.layers(x).mean((2, 3)))


def build_variant(name: str, seed: int, budget: ResNetBudget) -> nn.Module:
    """The plain ResNet for ``seed``, with gates added by ``add_attention`` for ``name``.

    The shared layers start from the same weights in every variant; the gates draw from
    their own seeded generator, so they too are the same from run to run."""
    spec = VARIANTS[name]
    if spec is None:
        return build_resnet(seed, budget.widths)
    return build_resnet(seed, budget.widths, spec[0], where=spec[1], reduction=budget.reduction)


def build_resnet(seed: int, widths: tuple[int, ...], kind: str | None = None, where: str = "blocks",
                 **kwargs: Any) -> nn.Module:
    """The plain ResNet for ``seed`` (``kind=None``), or with ``kind`` gates added by
    ``add_attention(model, kind, where=where, **kwargs)``: the shared layers start from the
    same weights for every ``kind``, the gates from their own seeded generator."""
    from .. import add_attention

    torch.manual_seed(seed)
    model = SmallResNet(widths)
    if kind is not None:
        model = copy.deepcopy(model)
        torch.manual_seed(10_000 + seed)
        add_attention(model, kind, where=where, **kwargs)
    return model


def cluttered_data(n_train: int, n_test: int, seed: int, device: torch.device) -> tuple[tuple[Tensor, Tensor],
                                                                                        tuple[Tensor, Tensor]]:
    """The cluttered digits of ``seed``: ((train images, labels), (test images, labels)) on ``device``."""
    train = make_cluttered_digits(n_train, split="train", seed=seed)
    test = make_cluttered_digits(n_test, split="test", seed=seed)
    return (train.images.to(device), train.labels.to(device)), (test.images.to(device), test.labels.to(device))


def run(budget: ResNetBudget, seed: int, device: torch.device, fig_dir: Any) -> dict[str, Any]:
    """Train every variant for ``budget.n_seeds`` seeds; train and test accuracy of each."""
    from .. import find_attention, viz

    seeds = [seed + i for i in range(budget.n_seeds)]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    gates: dict[str, int] = {}
    for s in seeds:
        (xtr, ytr), (xte, yte) = cluttered_data(budget.n_train, budget.n_test, s, device)
        for name in VARIANTS:
            model = build_variant(name, s, budget).to(device)
            gates[name] = len(find_attention(model))
            r = train_classifier(model, (xtr, ytr), (xte, yte), budget, s, f"resnet {name:<11} seed {s}")
            r["train_accuracy"] = evaluate(model, xtr, ytr)
            r["params"] = sum(p.numel() for p in model.parameters())
            runs[name].append(r)
            say(f"resnet  {name:<11} seed {s}: test accuracy {r['accuracy']:.3f}, "
                f"train accuracy {r['train_accuracy']:.3f}, {r['seconds']:.1f} s")
    models = {}
    for name in VARIANTS:
        rs = runs[name]
        test_acc, train_acc = [r["accuracy"] for r in rs], [r["train_accuracy"] for r in rs]
        gaps = [100.0 * (a - b) for a, b in zip(train_acc, test_acc)]
        models[name] = {
            "kind": None if VARIANTS[name] is None else VARIANTS[name][0],
            "where": None if VARIANTS[name] is None else VARIANTS[name][1],
            "gates": gates[name], "params": rs[0]["params"],
            "accuracy_mean": mean_std(test_acc)[0], "accuracy_std": mean_std(test_acc)[1], "accuracies": test_acc,
            "train_accuracy_mean": mean_std(train_acc)[0], "train_accuracy_std": mean_std(train_acc)[1],
            "train_accuracies": train_acc,
            "gap_points_mean": mean_std(gaps)[0], "gap_points_std": mean_std(gaps)[1],
            "final_train_loss_mean": mean_std([r["history"]["loss"][-1] for r in rs])[0],
            "seconds": sum(r["seconds"] for r in rs) / len(rs), "seconds_per_seed": [r["seconds"] for r in rs],
        }
    base = models["resnet"]
    comparisons = {f"{n}_vs_resnet": paired_difference(models[n]["accuracies"], base["accuracies"])
                   for n in VARIANTS if n != "resnet"}
    gap_vs = {f"{k}_convs_vs_blocks": paired_difference(
        [a - b for a, b in zip(models[f"{k}_convs"]["train_accuracies"], models[f"{k}_convs"]["accuracies"])],
        [a - b for a, b in zip(models[f"{k}_blocks"]["train_accuracies"], models[f"{k}_blocks"]["accuracies"])])
        for k in ("se", "cbam")}
    result = {
        "task": {"n_train": budget.n_train, "n_test": budget.n_test, "epochs": budget.epochs,
                 "batch_size": budget.batch_size, "lr": budget.lr, "widths": list(budget.widths),
                 "reduction": budget.reduction},
        "seeds": seeds, "models": models, "comparisons": comparisons, "gap_comparisons": gap_vs,
        "histories": {n: [r["history"] for r in runs[n]] for n in VARIANTS},
    }
    colors = {n: viz.model_color(n) for n in VARIANTS}
    viz.plot_train_test_bars({n: (m["train_accuracy_mean"], m["accuracy_mean"], m["accuracy_std"])
                              for n, m in models.items()}, fig_dir / "resnet_train_test.png", colors=colors,
                             title=f"Small ResNet + SE/CBAM via add_attention: train vs test accuracy "
                                   f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
    viz.plot_training_curves(mean_histories(result["histories"]), fig_dir / "resnet_curves.png",
                             title="Small ResNet variants: train loss and test accuracy per epoch (mean over seeds)",
                             colors=colors)
    result["figures"] = {"train_test": "resnet_train_test.png", "curves": "resnet_curves.png"}
    return result

