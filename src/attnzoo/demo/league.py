"""The gate league's outputs (``gates.py`` measures): findings, page section, summary lines and
the Markdown table of README and docs/mechanisms.md, from the ``"gates"`` results.

The league does not run in the default tour; ``league.json`` beside this file is the
``results.json`` of a real ``attnzoo demo --only gates`` run, committed, and the default
report shows it (``committed``, ``committed_section``), saying so.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from .findings import acc
from .stats import RULE, evidence

__all__ = ["COMMITTED", "committed", "league_findings", "league_section", "league_lines", "league_md",
           "league_rows", "committed_section", "committed_lines", "readme_league"]

#: The committed results of a real league run (``attnzoo demo --only gates --seed 0``).
COMMITTED = Path(__file__).with_name("league.json")
RUN = "attnzoo demo --only gates"
HEAD = ["gate (per block)", "test accuracy", "vs plain: mean, 95% interval (points)", "verdict",
        "parameters", "FLOPs / batch", "CPU fwd+bwd time (x plain)"]


def committed() -> dict[str, Any] | None:
    """The committed league run's results (the whole ``results.json``), or None if absent."""
    try:
        return json.loads(COMMITTED.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _verdict(cmp: dict[str, Any]) -> str:
    if cmp["n"] < 2:
        return "one seed: no interval"
    if cmp["significant"]:
        return "significantly better" if cmp["mean_points"] > 0 else "significantly worse"
    need = cmp.get("seeds_needed")
    return "not conclusive (" + (f"~{need} seeds would settle it)" if need else "no practical number of seeds)")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _seeds(n: int) -> str:
    return _plural(n, "seed")


def league_rows(g: dict[str, Any]) -> list[list[str]]:
    """One row per variant, best mean test accuracy first (the columns of ``HEAD``)."""
    rows, m = [], g["models"]
    for name in g["ranking"]:
        v = m[name]
        if v["kind"] is None:
            diff, verdict = "(reference)", ""
            params, flops = f"{v['params']:,}", f"{v['flops'] / 1e6:.1f} M"
        else:
            c = g["comparisons"][f"{name}_vs_plain"]
            lo, hi = c["ci95_points"]
            diff = f"{c['mean_points']:+.1f} [{lo:+.1f}, {hi:+.1f}]" if c["n"] > 1 else f"{c['mean_points']:+.1f}"
            verdict = _verdict(c)
            params = f"{v['params']:,} (+{v['extra_params']:,})"
            flops = f"{v['flops'] / 1e6:.1f} M (+{v['extra_flops'] / 1e6:.2f} M)"
        rows.append([name, acc(v["accuracy_mean"], v["accuracy_std"]), diff, verdict, params, flops,
                     f"{v['time_ratio']:.2f}x"])
    return rows


def _footnote(g: dict[str, Any]) -> str:
    t, c = g["task"], g["costs"]
    b = c["flops_batch"]
    return (f"Each gate added by `add_attention(model, kind, where=\"blocks\")` with its defaults (no keyword "
            f"arguments) to the small ResNet of the ResNet part (widths {', '.join(map(str, t['widths']))}, one gate "
            f"per basic block); cluttered digits, {t['n_train']} training and {t['n_test']} test canvases, "
            f"{_plural(t['epochs'], 'epoch')}, batch {t['batch_size']}, {_seeds(len(g['seeds']))}, paired with the plain "
            f"network (same data order and shared initial weights per seed). FLOPs: forward of one batch "
            f"({'x'.join(map(str, b))}); {c['flops_note']}. CPU time: forward+backward of one batch, "
            f"{c['time_threads']} thread, {c['time_rounds']} interleaved rounds in one process, median, relative "
            f"to the plain network. Verdicts: {RULE}.")


def league_md(g: dict[str, Any]) -> str:
    from .tables import md_table

    return md_table(HEAD, league_rows(g)) + "\n\n" + _footnote(g)


def league_lines(g: dict[str, Any]) -> list[str]:
    lines = [f"{'gate':<10}{'test accuracy':>16}{'vs plain (points)':>20}{'params':>9}{'MFLOPs':>9}{'time':>7}"]
    for name in g["ranking"]:
        v = g["models"][name]
        c = g["comparisons"].get(f"{name}_vs_plain")
        diff = f"{c['mean_points']:+.1f}" if c else "-"
        lines.append(f"{name:<10}{acc(v['accuracy_mean'], v['accuracy_std']):>16}{diff:>20}{v['params']:>9,}"
                     f"{v['flops'] / 1e6:>9.1f}{v['time_ratio']:>6.2f}x")
    return lines


def league_findings(g: dict[str, Any]) -> list[tuple[str, str]]:
    """Which gates beat or lost to the plain ResNet under the rule of ``stats.py``; the rest
    are not conclusive (with their seeds); then the cheapest and the costliest gate."""
    cmps = {n: g["comparisons"][f"{n}_vs_plain"] for n in g["variants"] if n != "plain"}
    better = [n for n, c in cmps.items() if c["significant"] and c["mean_points"] > 0]
    worse = [n for n, c in cmps.items() if c["significant"] and c["mean_points"] < 0]
    unsure = [n for n in cmps if n not in better + worse]
    base = g["models"]["plain"]
    out = [f"Plain ResNet {acc(base['accuracy_mean'], base['accuracy_std'])} over {_seeds(len(g['seeds']))}. "
           + (f"Significantly better with: {', '.join(better)}. " if better else "No gate was significantly better. ")
           + (f"Significantly worse with: {', '.join(worse)}. " if worse else "No gate was significantly worse. ")
           + ("Not conclusive: " + ", ".join(f"{n} ({cmps[n]['mean_points']:+.1f})" for n in unsure) + "."
              if unsure else "")]
    for n in better + worse:
        out.append(f"{n}: {cmps[n]['mean_points']:+.1f} ± {cmps[n]['std_points']:.1f} points ({evidence(cmps[n])}).")
    m = g["models"]
    slow = max(cmps, key=lambda n: m[n]["time_ratio"])
    fast = min(cmps, key=lambda n: m[n]["time_ratio"])
    out.append(f"Cost: CPU time per batch from {m[fast]['time_ratio']:.2f}x ({fast}) to {m[slow]['time_ratio']:.2f}x "
               f"({slow}) the plain network's; extra parameters up to "
               f"{max(m[n]['extra_params'] for n in cmps):,} ({max(m[n]['extra_params'] for n in cmps) / base['params']:.1%}).")
    return [("Gate league", t) for t in out]


def league_section(g: dict[str, Any], note: str = "") -> str:
    from .page import _table  # the page's table markup

    return (f"\n<h2>Gate league: which gate helps, at what cost</h2>\n{note}"
            f"{_table([escape(h) for h in HEAD], [[escape(c) for c in r] for r in league_rows(g)])}"
            f"<p>{escape(_footnote(g))}</p>")


def committed_section() -> str:
    """The default report's league section: the committed run's table, said to be that."""
    run = committed()
    if run is None or not run.get("gates"):
        return (f"\n<h2>Gate league</h2><p>Not run in the default tour; run <code>{RUN}</code> "
                "(about 10 minutes of CPU time) for it.</p>")
    env = run["environment"]
    note = (f"<p class=\"box\">Not run now: the default tour leaves the league out (it takes several times the "
            f"tour's CPU budget). This is the committed result of <code>{escape(env.get('command', RUN))}</code> "
            f"from {escape(env.get('date', '?'))} on {escape(env.get('cpu', '?'))}; run <code>{RUN}</code> to "
            "measure it on this machine.</p>")
    return league_section(run["gates"], note)


def committed_lines() -> list[str]:
    run = committed()
    when = f" (committed run of {run['environment'].get('date', '?')})" if run and run.get("gates") else ""
    return [f"gate league: not run in the default tour; the report shows the committed table{when}; "
            f"run `{RUN}` for it"]


def readme_league(run: dict[str, Any]) -> str:
    """README's and docs/mechanisms.md's league block, from a league run's ``results.json``."""
    env = run["environment"]
    head = (f"Run `{env.get('command', RUN)}` on {env.get('date', '?')}: attnzoo {env.get('attnzoo', '?')}, torch "
            f"{env['torch']}, {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores, {env['threads']} thread "
            f"used), {run['seconds']:.0f} s in all ({run.get('cpu_seconds', 0):.0f} s of CPU time, load average "
            f"{env.get('load_average_1min_at_start') or 0:.1f} at the start: other work on the machine slows every "
            "timing; the CPU time ratios are measured side by side in one process).")
    findings = "\n".join(f"* {text}" for _, text in league_findings(run["gates"]))
    return f"{head}\n\n{league_md(run['gates'])}\n\n{findings}\n"
