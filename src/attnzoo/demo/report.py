"""The tour's outputs from its results: the findings in words, the HTML page, the summary
printed at the end and README's results block, each covering every part that ran (in the
order of ``parts.PARTS``). The pieces live beside it: statistics in ``stats.py``, wording
in ``findings.py``, the page in ``page.py``, text and Markdown tables in ``tables.py``."""

from __future__ import annotations

from typing import Any

from .league import committed_lines, committed_section
from .page import page, views_section
from .parts import PARTS
from .stats import REPRODUCIBLE, RULE

__all__ = ["findings", "html_page", "summary", "readme_results"]


def _ran(results: dict[str, Any]) -> list[Any]:
    return [p for name, p in PARTS.items() if results.get(name)]


def findings(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline results in words: (topic, sentence), part by part."""
    return [f for p in _ran(results) for f in p.findings(results[p.name])]


def html_page(results: dict[str, Any], diagrams: str = "") -> str:
    """The whole report page: inline CSS, no scripts, figures by relative file name;
    `diagrams` (HTML, `attnzoo.viz.diagrams.diagram_section`) goes after the parts."""
    body = "".join(p.section(results[p.name]) for p in _ran(results)) + diagrams
    if results.get("views"):
        body += views_section(results["views"])
    if not results.get("only"):
        body += committed_section()  # the league is not in the default tour: its committed table
    return page(results, findings(results), body)


def summary(results: dict[str, Any], index: str) -> str:
    """The plain-text summary printed when the tour ends: every part's table, the findings."""
    lines = [line for p in _ran(results) for line in p.lines(results[p.name])]
    if not results.get("only"):
        lines += committed_lines()
    if results.get("quick"):
        lines.append("quick run: a smoke test with small budgets; its numbers are not the tour's findings")
    lines += [f"{topic}: {text}" for topic, text in findings(results)]
    lines.append(f"report: {index}")
    return "\n".join(lines)


def _times(run: dict[str, Any]) -> str:
    cpu = f" ({run['cpu_seconds']:.0f} s of CPU time)" if "cpu_seconds" in run else ""
    load = run["environment"].get("load_average_1min_at_start")
    return f"{run['seconds']:.0f} s{cpu}" + (f", load average {load:.1f} at the start" if load is not None else "")


def readme_results(results: dict[str, Any], quick: dict[str, Any] | None = None) -> str:
    """README's tour results (tables and findings) as Markdown, generated from the
    ``results.json`` of a real default run (and, for the quick run's time, of a quick run),
    so README cannot drift from what the tour measured; ``tests/test_demo.py`` checks it."""
    env = results["environment"]
    head = (f"Run `{env.get('command', 'attnzoo demo')}` on {env.get('date', '?')}: attnzoo {env.get('attnzoo', '?')}, "
            f"torch {env['torch']}, {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores, {env['threads']} "
            f"thread used), {_times(results)}. CPU time is the closer guide to the run time on an idle machine: "
            "other work on the machine slows the wall-clock time most, and the CPU time somewhat.")
    if quick is not None:
        head += f" `{quick['environment'].get('command', 'attnzoo demo --quick')}`: {_times(quick)}."
    head += f" Reproducibility: {REPRODUCIBLE}. How findings are worded: {RULE}."
    out = [head, *(p.markdown(results[p.name]) for p in _ran(results))]
    out.append("\n".join(f"* **{topic}.** {text}" for topic, text in findings(results)))
    return "\n\n".join(out) + "\n"
