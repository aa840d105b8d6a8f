"""The tour's findings in words, worded from the numbers (one function per part), and the
names the page, the terminal summary and README share.

A comparison is worded by the rule of ``stats.py``: "beat" / "did worse" / "significantly"
only where it would hold on any machine type; otherwise "not conclusive", with the seeds
it would take (``stats.evidence``).
"""

from __future__ import annotations

from typing import Any

from .stats import MIN_SEEDS, evidence

NAMES = {"baseline": "baseline (no attention)", "se": "SE after each stage", "cbam": "CBAM after each stage"}
SHORT = {"se": "SE", "cbam": "CBAM", "se_blocks": "SE per block", "se_convs": "SE after every conv",
         "cbam_blocks": "CBAM per block", "cbam_convs": "CBAM after every conv",
         "attention": "the attention head", "last": "last state", "mean": "masked mean"}
RESNET_NAMES = {"resnet": "plain ResNet", "se_blocks": "+ SE per block", "se_convs": "+ SE after every conv",
                "cbam_blocks": "+ CBAM per block", "cbam_convs": "+ CBAM after every conv"}
SPEECH_NAMES = {"last": "last state", "mean": "masked mean", "attention": "TemporalAttention"}
#: What the speech model should reach on the official split (strong published methods: 0.95-0.99).
SPEECH_TARGET = 0.95


def acc(mean: float, std: float) -> str:
    """How accuracies appear everywhere (page, terminal): ``0.912 ± 0.010``."""
    return f"{mean:.3f} ± {std:.3f}"


def verdict(name: str, cmp: dict[str, Any], against: str = "the baseline") -> str:
    """One sentence on a paired comparison with ``against`` (accuracy points), worded by
    the rule of ``stats.py``: "beat"/"did worse" only where it would hold on any machine."""
    m, s, n = cmp["mean_points"], cmp["std_points"], cmp["n"]
    who = SHORT[name]
    if n < 2:
        text = f"{who} − {against}: {m:+.1f} points from a single seed, too few to tell."
    elif cmp["significant"]:
        word = "beat" if m > 0 else "did worse than"
        text = f"{who} {word} {against} by {abs(m):.1f} ± {s:.1f} points ({evidence(cmp)})."
    else:
        text = f"Not conclusive whether {who} differs from {against}: {m:+.1f} ± {s:.1f} points ({evidence(cmp)})."
    return text[0].upper() + text[1:]


def resnet_text(r: dict[str, Any]) -> list[str]:
    """The ResNet findings: accuracy of each insertion against the plain ResNet, then the
    survey's question, whether a gate after every conv overfits more than one per block."""
    m = r["models"]
    base = m["resnet"]
    out = ["Test accuracy against the plain ResNet (" + acc(base["accuracy_mean"], base["accuracy_std"]) + "): " +
           "; ".join(f"{SHORT[n]} {acc(m[n]['accuracy_mean'], m[n]['accuracy_std'])} "
                     f"({_signed(r['comparisons'][f'{n}_vs_resnet'])})" for n in RESNET_NAMES
                     if n in m and n != "resnet") + "."]
    for kind in ("se", "cbam"):
        b, c = m[f"{kind}_blocks"], m[f"{kind}_convs"]
        cmp = r["gap_comparisons"][f"{kind}_convs_vs_blocks"]
        head = (f"{kind.upper()} after every conv ({c['gates']} gates) vs per block ({b['gates']}): train−test gap "
                f"{c['gap_points_mean']:+.1f} vs {b['gap_points_mean']:+.1f} points, test {c['accuracy_mean']:.3f} vs "
                f"{b['accuracy_mean']:.3f}")
        if cmp["n"] < 2:
            tail = "one seed, too few to tell whether it overfits more."
        elif cmp["significant"] and cmp["mean_points"] > 0:
            tail = f"a significantly larger gap ({evidence(cmp)}): here it overfits more, as the survey warns."
        elif cmp["significant"]:
            tail = (f"a significantly smaller gap ({evidence(cmp)}): no sign of the overfitting the survey "
                    "warns of.")
        else:
            tail = f"not conclusive whether the gap differs ({evidence(cmp)})."
        out.append(f"{head}; {tail}")
    return out


def _signed(cmp: dict[str, Any]) -> str:
    m, n = cmp["mean_points"], cmp["n"]
    if n < 2:
        return f"{m:+.1f} points, one seed"
    return f"{m:+.1f} points, {'significant' if cmp['significant'] else 'not conclusive'}"


def speech_text(sp: dict[str, Any]) -> list[str]:
    """The speech findings: the three heads, the target, and where the attention looks."""
    m, a = sp["models"], sp["attention"]
    heads = ", ".join(f"{SPEECH_NAMES[h]} {acc(m[h]['accuracy_mean'], m[h]['accuracy_std'])}"
                      for h in SPEECH_NAMES if h in m)
    att = m["attention"]["accuracy_mean"]
    target = (f"the attention model reached {att:.3f}, meeting the {SPEECH_TARGET:.2f} that strong published "
              "methods reach on this split" if att >= SPEECH_TARGET else
              f"the attention model got {att:.3f}, BELOW the {SPEECH_TARGET:.2f} that strong published methods "
              "reach on this split")
    out = [f"Speaker identification on {sp['task']['n_test']} test utterances (9 speakers, chance 0.11), "
           f"test accuracy over {len(sp['seeds'])} seeds: {heads}; {target}."]
    out += [verdict("attention", sp["comparisons"][f"attention_vs_{h}"], against=f"the {SPEECH_NAMES[h]} head")
            for h in ("last", "mean")]
    where = ("towards the end" if a["centre_mean"] > 0.6 else "towards the start" if a["centre_mean"] < 0.4
             else "around the middle")
    out.append(f"Where it looks: the attention-weighted position is {a['centre_mean']:.2f} ± {a['centre_std']:.2f} "
               f"of the way through the utterance (0 = first frame, 1 = last), {where}; the effective number of "
               f"frames it averages is {a['effective_frames_share_mean']:.0%} of the utterance's length "
               "(100% = a plain mean).")
    return out


def localization_text(v: dict[str, Any]) -> str:
    stages = v["cbam_localization_per_stage"]
    r, sd, first = v["cbam_localization_ratio"], v["cbam_localization_ratio_std"], stages[0]
    side = first["resolution"]
    text = (f"At stage 1 ({side}x{side} gate) the mean spatial gate inside the digit's box is "
            f"{r:.2f} ± {sd:.2f} times its mean over the whole canvas")
    every = len(first["per_seed"]) > 1
    if r >= 1.5:
        text += ": the gate clearly finds the digit and turns the clutter down"
    elif r >= 1.05:
        text += (f": a weak preference for the digit ({r - 1:.0%} above average"
                 f"{', in every seed' if every and min(first['per_seed']) > 1 else ''}), not a sharp spotlight")
    elif r > 0.95:
        text += ": about 1.0, so this gate does not single out the digit"
    else:
        text += ": the gate is LOWER on the digit than elsewhere, so it is no digit finder"
    if len(stages) > 1:
        text += "; later stages: " + ", ".join(f"stage {s['stage']} {s['mean']:.2f}" for s in stages[1:])
    ink = first["digit_vs_clutter_ink_mean"]
    verdict = ("prefers the digit's strokes" if ink >= 1.05 else
               "prefers the clutter's strokes" if ink <= 0.95 else "treats both alike")
    return (text + f". Comparing ink with ink, the stage-1 gate is {ink:.2f} ± "
            f"{first['digit_vs_clutter_ink_std']:.2f} times as high on the digit's strokes as on the fragments': "
            f"it {verdict}.")


def se_text(v: dict[str, Any]) -> str:
    parts = []
    for i, (mean, spread, img) in enumerate(zip(v["se_gate_mean_per_stage"], v["se_gate_class_spread_per_stage"],
                                                 v["se_gate_image_std_per_stage"])):
        if mean > 0.95:
            desc = f"are almost fully open (mean {mean:.3f}): the features pass nearly unchanged"
        elif img < 1e-3:
            desc = f"are the same for every test image (mean {mean:.2f}): a fixed per-channel scale"
        else:
            desc = (f"vary with the image (std {img:.3f} over images) and with the digit class "
                    f"(spread {spread:.3f} over classes), mean {mean:.2f}")
        parts.append(f"stage {i + 1} gates {desc}")
    return "In the SE model (first seed), " + "; ".join(parts) + "."


def fit_text(v: dict[str, Any]) -> list[str]:
    """Training loss against test accuracy, attention model vs baseline (means over seeds)."""
    m, n_train, out = v["models"], v["task"]["n_train"], []
    b_loss, b_acc = m["baseline"]["final_train_loss_mean"], m["baseline"]["accuracy_mean"]
    for name in ("se", "cbam"):
        loss, acc_ = m[name]["final_train_loss_mean"], m[name]["accuracy_mean"]
        head = f"{SHORT[name]} ended with a final training loss of {loss:.3f} (baseline {b_loss:.3f})"
        if loss < b_loss and acc_ < b_acc:
            out.append(f"{head}, lower, yet a lower mean test accuracy ({acc_:.3f} vs {b_acc:.3f}): it fits the "
                       f"{n_train:,} training canvases more closely without generalising better.")
        elif loss < b_loss:
            out.append(f"{head}, lower, and a mean test accuracy of {acc_:.3f} (baseline {b_acc:.3f}).")
        else:
            out.append(f"{head}: it did not fit the training set faster than the baseline.")
    return out


def vision_findings(v: dict[str, Any]) -> list[tuple[str, str]]:
    return [*((f"{SHORT[n]} vs baseline", verdict(n, v["comparisons"][f"{n}_vs_baseline"])) for n in ("se", "cbam")),
            ("CBAM's spatial gate", localization_text(v))]


def resnet_findings(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [("ResNet + add_attention", t) for t in resnet_text(r)]


def speech_findings(sp: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Speech, temporal attention", t) for t in speech_text(sp)]


def dates_findings(d: dict[str, Any]) -> list[tuple[str, str]]:
    best = max(d["cross_attention"]["field_per_layer"])
    what = ("It aligns output with input" if best >= 0.8 else "It has not learned a clean alignment")
    return [("Dates", f"The Transformer got {d['exact_match']:.1%} of {d['n_test']} held-out dates exactly "
                      f"right (character accuracy {d['char_accuracy']:.1%})."),
            ("Cross-attention", f"{what}: in the best decoder layer, {best:.0%} of output digits look "
                                "hardest at an input character of the right field (year, month or day).")]


#: The position schemes' names in the findings, the page and the tables.
POSITION_NAMES = {"learned": "learned absolute", "sinusoidal": "sinusoidal", "rope": "RoPE", "alibi": "ALiBi",
                  "nope": "none (NoPE)"}


def bits(mean: float | None, std: float | None) -> str:
    """How bits per character appear everywhere: ``2.512 ± 0.010``, ``n/a`` where not applicable."""
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


def bits_evidence(cmp: dict[str, Any]) -> str:
    """`stats.evidence` for a comparison of losses in bits per character (``paired_difference``
    of values in bits: its points are 0.01 bits)."""
    n, (lo, hi) = cmp["n"], cmp["ci95_points"]
    text = f"paired over {n} seeds; 95% interval {lo / 100:+.3f} to {hi / 100:+.3f} bits"
    text += f"; fewer than {MIN_SEEDS} seeds" if n < MIN_SEEDS else \
        f"; the margin for other machines is ±{cmp['margin_points'] / 100:.3f}"
    if cmp["significant"]:
        return text
    needed = cmp.get("seeds_needed")
    if needed is None:
        return text + "; no practical number of seeds would settle a difference this small"
    return text + f"; about {needed} seeds would settle it if the mean and sd stay as they are"


def _bits_change(cmp: dict[str, Any], worse: str, better: str, same: str) -> str:
    """``worse`` / ``better`` (loss up / down, significant by the rule of ``stats.py``) or
    ``same`` (not conclusive), with the paired difference in bits and its evidence."""
    m, s = cmp["mean_points"] / 100, cmp["std_points"] / 100
    if cmp["n"] < 2:
        return f"{m:+.3f} bits/char from a single seed, too few to tell"
    word = (worse if m > 0 else better) if cmp["significant"] else same
    return f"{word}: {m:+.3f} ± {s:.3f} bits/char ({bits_evidence(cmp)})"


def positions_text(p: dict[str, Any]) -> list[str]:
    """The positions findings: loss at the training length per scheme (and against no
    positions), what happens beyond it, and the ALiBi paper's claim."""
    t, sch, cmp = p["task"], p["schemes"], p["comparisons"]
    ctx, longest = t["context"], t["eval_contexts"][-1]
    names = [s for s in POSITION_NAMES if s in sch]
    out = [f"Character-level Tiny Shakespeare, the same {t['layers']}-layer Transformer trained at context {ctx} for "
           f"{t['steps']} steps, validation bits/char at context {ctx} over {len(p['seeds'])} seeds: "
           + ", ".join(f"{POSITION_NAMES[s]} {bits(sch[s]['bits_mean'][0], sch[s]['bits_std'][0])}" for s in names)
           + f" (lower is better; ignoring all context, the unigram model gets {t['unigram_bits']:.2f})."]
    out += [f"At context {ctx}, {POSITION_NAMES[s]} against no positions: "
            + _bits_change(cmp[f"{s}_vs_nope"], "worse", "better", "not conclusive") + "."
            for s in names if f"{s}_vs_nope" in cmp]
    beyond = [f"{POSITION_NAMES[s]} " + _bits_change(cmp[f"{s}_longest_vs_train"], "worse", "better",
                                                      "no conclusive change")
              for s in names if f"{s}_longest_vs_train" in cmp]
    na = [POSITION_NAMES[s] for s in names if sch[s]["bits_mean"][-1] is None]
    out.append(f"Beyond the training length, at context {longest} against {ctx} (the same characters scored, each "
               f"with {longest - t['scored']} or more characters before it): " + "; ".join(beyond) + "."
               + (f" {', '.join(na).capitalize()}: not applicable beyond {ctx} (no position rows there)."
                  if na else ""))
    against = [f"{POSITION_NAMES[s]} " + _bits_change(cmp[f"alibi_vs_{s}_longest"], "worse", "better", "not conclusive")
               for s in names if f"alibi_vs_{s}_longest" in cmp]
    if against:
        out.append(f"At context {longest}, ALiBi against " + "; against ".join(against) + ".")
    if "alibi_longest_vs_train" in cmp and "sinusoidal_longest_vs_train" in cmp:
        a, s = cmp["alibi_longest_vs_train"], cmp["sinusoidal_longest_vs_train"]
        alibi_up, sin_up = (c["significant"] and c["mean_points"] > 0 for c in (a, s))
        holds = ("holds here: ALiBi's loss does not rise significantly, sinusoidal's does" if sin_up and not alibi_up
                 else "does not hold here: ALiBi's loss rises too" if alibi_up else
                 "does not hold here: sinusoidal's loss does not rise" if s["significant"] else
                 "is not settled here: ALiBi's loss does not rise significantly, but sinusoidal's change is not "
                 "conclusive over these seeds")
        out.append(f"The ALiBi paper's claim (its loss stays flat beyond the training length while sinusoidal "
                   f"positions degrade) {holds}: ALiBi {a['mean_points'] / 100:+.3f} bits/char, sinusoidal "
                   f"{s['mean_points'] / 100:+.3f} from context {ctx} to {longest}.")
    return out


def positions_findings(p: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Positions", t) for t in positions_text(p)]
