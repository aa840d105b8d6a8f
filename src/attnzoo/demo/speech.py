"""Speech part of the tour: temporal attention on real speech (speaker identification).

The data (``attnzoo.data.vowels``): UCI *Japanese Vowels*, 9 male speakers saying /ae/,
each utterance 7-29 frames of 12 LPC cepstrum coefficients, official split of 270 training
and 370 test utterances. The task: which of the 9 speakers is it?

One encoder, three heads. A one-layer GRU reads the frames (zero-padded to the longest
utterance of the batch; a GRU is causal, so its output at a real frame never sees the
padding after it). The whole utterance must then become one vector for a linear classifier:

* ``last``: the GRU output at the last real frame (the classic recurrent summary);
* ``mean``: the mean of the outputs over the real frames (padding masked out);
* ``attention``: ``attnzoo.TemporalAttention`` (additive score): a learned weight per frame,
  softmax over the real frames only (``padding_mask`` True = padding), and the weighted mean.

Same encoder size, data order, initial encoder weights and budget for every head; several
seeds; test accuracy mean and sample std. The figure shows the attention weights of some
test utterances, grouped by speaker: where in each utterance the model looks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.vowels import load_japanese_vowels
from ..temporal import TemporalAttention
from .common import SpeechBudget, progress_bar, say, stopwatch, sync
from .stats import mean_std, paired_difference

HEADS = ("last", "mean", "attention")
N_SPEAKERS, N_COEFFS = 9, 12


def padding_mask(lengths: Tensor, t: int) -> Tensor:
    """(B, t) bool, True = padding (frame index >= the utterance's length)."""
    return torch.arange(t, device=lengths.device) >= lengths[:, None]


class SpeakerNet(nn.Module):
    """GRU encoder + one of three heads + linear classifier; (B, T, 12), lengths (B,) -> logits (B, 9)."""

    def __init__(self, head: str, hidden: int = 64) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head = head
        self.encoder = nn.GRU(N_COEFFS, hidden, batch_first=True)
        self.attn = TemporalAttention(hidden) if head == "attention" else None
        self.classifier = nn.Linear(hidden, N_SPEAKERS)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out, _ = self.encoder(x)  # (B, T, hidden)
        pad = padding_mask(lengths, x.shape[1])  # (B, T)
        if self.head == "last":
            z = out[torch.arange(len(x), device=x.device), lengths - 1]  # (B, hidden)
        elif self.head == "mean":
            z = out.masked_fill(pad[..., None], 0.0).sum(1) / lengths[:, None]  # (B, hidden)
        else:
            z, _ = self.attn(out, pad)  # (B, hidden), weights (B, T)
        return self.classifier(z)


def build_model(head: str, seed: int, budget: SpeechBudget) -> SpeakerNet:
    """The encoder and classifier start from the same weights for every head (same ``seed``)."""
    torch.manual_seed(seed)
    shared = SpeakerNet("last", budget.hidden).state_dict()
    model = SpeakerNet(head, budget.hidden)
    missing, unexpected = model.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith("attn.") for k in missing)
    return model


def load(device: torch.device) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Both splits, each coefficient standardised with the training frames' mean and std
    (padding stays 0)."""
    data = {s: load_japanese_vowels(s) for s in ("train", "test")}
    x, lengths, _ = data["train"]
    frames = x[~padding_mask(lengths, x.shape[1])]  # (F, 12)
    mu, sd = frames.mean(0), frames.std(0)
    out = {}
    for split, (x, lengths, labels) in data.items():
        valid = ~padding_mask(lengths, x.shape[1])
        x = ((x - mu) / sd) * valid[..., None]  # (N, T, 12)
        out[split] = (x.to(device), lengths.to(device), labels.to(device))
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, lengths: Tensor, labels: Tensor) -> float:
    was = model.training
    model.eval()
    acc = float((model(x, lengths).argmax(1) == labels).float().mean())
    model.train(was)
    return acc


def train(model: SpeakerNet, data: dict[str, tuple[Tensor, Tensor, Tensor]], budget: SpeechBudget,
          seed: int, desc: str) -> dict[str, Any]:
    """AdamW + one-cycle; batches trimmed to their longest utterance. History: mean train loss
    and test accuracy per epoch; seconds exclude the evaluations."""
    x, lengths, y = data["train"]
    device = x.device
    steps = math.ceil(len(x) / budget.batch_size)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.epochs * steps)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    seconds = 0.0
    bar = progress_bar(budget.epochs * steps, desc)
    try:
        for _ in range(budget.epochs):
            model.train()
            perm = torch.randperm(len(x), generator=gen).to(device)
            loss_sum = torch.zeros((), device=device)
            with stopwatch() as t:
                for i in range(steps):
                    idx = perm[i * budget.batch_size:(i + 1) * budget.batch_size]
                    t_max = int(lengths[idx].max())
                    loss = F.cross_entropy(model(x[idx, :t_max], lengths[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    loss_sum += loss.detach() * len(idx)
                    bar.update(1)
                sync(device)
            seconds += t[0]
            history["loss"].append(loss_sum.item() / len(x))
            history["accuracy"].append(accuracy(model, *data["test"]))
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", test_acc=f"{history['accuracy'][-1]:.3f}")
    finally:
        bar.close()
    return {"history": history, "accuracy": history["accuracy"][-1],
            "train_accuracy": accuracy(model, *data["train"]), "seconds": seconds}


@torch.no_grad()
def attention_weights(model: SpeakerNet, x: Tensor, lengths: Tensor) -> Tensor:
    """(N, T) frame weights of the attention head (exactly 0 on padding), on the CPU."""
    model.eval()
    _, weights = model.attn(model.encoder(x)[0], padding_mask(lengths, x.shape[1]))  # (N, T)
    return weights.cpu()


def where_it_looks(weights: Tensor, lengths: Tensor) -> dict[str, float]:
    """Summaries of (N, T) frame weights: the weighted mean relative position (0 = first frame,
    1 = last), the weight on the last real frame, and the effective number of frames
    (exp of the entropy) as a share of the utterance's length (1.0 = uniform)."""
    w, n = weights.double(), lengths.cpu()
    pos = torch.arange(w.shape[1], dtype=torch.float64)[None] / (n[:, None] - 1).clamp(min=1)  # (N, T)
    centre = (w * pos).sum(1)
    last = w[torch.arange(len(w)), n - 1]
    entropy = -(w * w.clamp(min=1e-30).log()).sum(1)
    return {"centre_mean": float(centre.mean()), "centre_std": float(centre.std()),
            "last_frame_weight_mean": float(last.mean()),
            "effective_frames_share_mean": float((entropy.exp() / n).mean())}


def run(budget: SpeechBudget, seed: int, device: torch.device, fig_dir: Any) -> dict[str, Any]:
    """Train the three heads for ``budget.n_seeds`` seeds; draw where the attention looks."""
    from .. import viz

    data = load(device)
    seeds = [seed + i for i in range(budget.n_seeds)]
    runs: dict[str, list[dict[str, Any]]] = {h: [] for h in HEADS}
    keep = None
    for s in seeds:
        for head in HEADS:
            model = build_model(head, s, budget).to(device)
            r = train(model, data, budget, s, f"speech {head:<9} seed {s}")
            r["params"] = sum(p.numel() for p in model.parameters())
            runs[head].append(r)
            say(f"speech  {head:<9} seed {s}: test accuracy {r['accuracy']:.3f}, "
                f"train loss {r['history']['loss'][-1]:.3f}, {r['seconds']:.1f} s")
            if head == "attention" and s == seed:
                keep = model
    models = {}
    for head in HEADS:
        accs = [r["accuracy"] for r in runs[head]]
        m, sd = mean_std(accs)
        models[head] = {"accuracy_mean": m, "accuracy_std": sd, "accuracies": accs,
                        "train_accuracy_mean": mean_std([r["train_accuracy"] for r in runs[head]])[0],
                        "params": runs[head][0]["params"],
                        "seconds": sum(r["seconds"] for r in runs[head]) / len(seeds)}
    x, lengths, labels = data["test"]
    weights = attention_weights(keep, x, lengths)  # (370, T)
    result = {
        "task": {"n_train": len(data["train"][0]), "n_test": len(x), "n_speakers": N_SPEAKERS,
                 "frames": [int(lengths.min()), int(lengths.max())], "encoder": "GRU", "hidden": budget.hidden,
                 "epochs": budget.epochs, "batch_size": budget.batch_size, "lr": budget.lr},
        "seeds": seeds, "models": models,
        "comparisons": {f"attention_vs_{h}": paired_difference(models["attention"]["accuracies"],
                                                               models[h]["accuracies"]) for h in ("last", "mean")},
        "attention": where_it_looks(weights, lengths),
        "histories": {h: [r["history"] for r in runs[h]] for h in HEADS},
    }
    rows = [i for spk in range(N_SPEAKERS) for i in (labels == spk).nonzero()[:budget.n_plot_per_speaker, 0].tolist()]
    viz.plot_sequence_weights(weights[rows], lengths[rows].cpu(), fig_dir / "speech_attention.png",
                              row_labels=[f"speaker {int(labels[i]) + 1}" for i in rows],
                              title=f"Temporal attention over the frames of test utterances (seed {seed}); "
                                    "blank = after the utterance's end")
    viz.plot_accuracy_bars({h: (models[h]["accuracy_mean"], models[h]["accuracy_std"]) for h in HEADS},
                           fig_dir / "speech_accuracy.png",
                           title=f"Speaker identification: test accuracy (mean ± sd, {len(seeds)} seeds)",
                           colors={h: viz.model_color(h) for h in HEADS})
    result["figures"] = {"attention": "speech_attention.png", "accuracy": "speech_accuracy.png"}
    viz.attention_view(  # one row per plotted utterance, one column per frame
        {"TemporalAttention": weights[rows]}, heads_averaged=True, path=fig_dir / "speech_attention_view.html",
        query_tokens=[f"utterance {i} (speaker {int(labels[i]) + 1})" for i in rows],
        tokens=[f"frame {t}" for t in range(weights.shape[1])],
        title="Speech: temporal attention over the frames of test utterances")
    result["figures"]["view"] = {"file": "speech_attention_view.html",
                                 "title": "Speech: temporal attention per utterance (pick an utterance)"}
    return result
