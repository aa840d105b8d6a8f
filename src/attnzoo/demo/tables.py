"""The tour's numbers as plain-text lines (the summary printed at the end) and as README
Markdown tables: one function of each kind per part."""

from __future__ import annotations

from typing import Any

from .findings import NAMES, POSITION_NAMES, RESNET_NAMES, SPEECH_NAMES, acc, bits


def _text_table(title: str, keys: dict[str, str], models: dict[str, Any], extra: str = "") -> list[str]:
    """``title`` row, then one row per model (its key, test accuracy, parameters, seconds)."""
    lines = [f"{title:<14}{'test accuracy':>16}{'params':>9}{'train s':>9}{extra}"]
    for k in (k for k in keys if k in models):
        m = models[k]
        gap = f"{m['gap_points_mean']:>+12.1f}" if extra else ""
        lines.append(f"{k:<14}{acc(m['accuracy_mean'], m['accuracy_std']):>16}{m['params']:>9,}"
                     f"{m['seconds']:>9.1f}{gap}")
    return lines


def vision_lines(v: dict[str, Any]) -> list[str]:
    return [*_text_table("vision model", NAMES, v["models"]),
            f"CBAM localization ratio (stage 1): {v['cbam_localization_ratio']:.2f}"]


def resnet_lines(r: dict[str, Any]) -> list[str]:
    return _text_table("resnet variant", RESNET_NAMES, r["models"], extra=f"{'gap (points)':>14}")


def speech_lines(sp: dict[str, Any]) -> list[str]:
    return _text_table("speech head", SPEECH_NAMES, sp["models"])


def dates_lines(d: dict[str, Any]) -> list[str]:
    return [f"dates: exact match {d['exact_match']:.3f}, character accuracy {d['char_accuracy']:.3f} "
            f"({d['n_test']} held-out dates, {d['seconds']:.1f} s training)"]


def md_table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def vision_md(v: dict[str, Any]) -> str:
    return md_table(["small CNN on cluttered digits", f"test accuracy ({_seeds(len(v['seeds']))})", "train accuracy",
                     "parameters", "train s / seed"],
                    [[NAMES[k], acc(m["accuracy_mean"], m["accuracy_std"]), f"{m['train_accuracy_mean']:.3f}",
                      f"{m['params']:,}", f"{m['seconds']:.1f}"]
                     for k, m in ((k, v["models"][k]) for k in NAMES if k in v["models"])])


def resnet_md(r: dict[str, Any]) -> str:
    return md_table(["small ResNet + `add_attention`", "gates", "parameters", "train accuracy",
                     f"test accuracy ({_seeds(len(r['seeds']))})", "train − test (points)"],
                    [[RESNET_NAMES[k], m["gates"], f"{m['params']:,}", f"{m['train_accuracy_mean']:.3f}",
                      acc(m["accuracy_mean"], m["accuracy_std"]), f"{m['gap_points_mean']:+.1f}"]
                     for k, m in ((k, r["models"][k]) for k in RESNET_NAMES if k in r["models"])])


def speech_md(sp: dict[str, Any]) -> str:
    return md_table(["Japanese Vowels speaker ID, GRU + head", f"test accuracy ({_seeds(len(sp['seeds']))})",
                     "parameters"],
                    [[SPEECH_NAMES[k], acc(m["accuracy_mean"], m["accuracy_std"]), f"{m['params']:,}"]
                     for k, m in ((k, sp["models"][k]) for k in SPEECH_NAMES if k in sp["models"])])


def dates_md(d: dict[str, Any]) -> str:
    return md_table(["dates Transformer", "exact match", "character accuracy", "held-out dates", "parameters"],
                    [["encoder-decoder", f"{d['exact_match']:.3f}", f"{d['char_accuracy']:.3f}", d["n_test"],
                      f"{d['params']:,}"]])


def positions_lines(p: dict[str, Any]) -> list[str]:
    """One row per position scheme: bits per character at each evaluation context."""
    contexts = p["task"]["eval_contexts"]
    lines = [f"{'positions':<12}" + "".join(f"{f'bits/char @{c}':>17}" for c in contexts) + f"{'train s':>9}"]
    for k, m in ((k, p["schemes"][k]) for k in POSITION_NAMES if k in p["schemes"]):
        lines.append(f"{k:<12}" + "".join(f"{bits(a, b):>17}" for a, b in zip(m["bits_mean"], m["bits_std"]))
                     + f"{m['seconds']:>9.1f}")
    return lines


def positions_md(p: dict[str, Any]) -> str:
    t = p["task"]
    return md_table([f"Tiny Shakespeare, trained at context {t['context']} ({_seeds(len(p['seeds']))})",
                     *(f"bits/char at {c}" for c in t["eval_contexts"]), "parameters"],
                    [[POSITION_NAMES[k], *(bits(a, b) for a, b in zip(m["bits_mean"], m["bits_std"])),
                      f"{m['params']:,}"]
                     for k, m in ((k, p["schemes"][k]) for k in POSITION_NAMES if k in p["schemes"])])
