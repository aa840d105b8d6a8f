"""Tables in the docs rendered from committed ``attnzoo bench --json`` files, never typed by hand.

A block in a Markdown file:

    <!-- bench: docs/bench/main.json groups=mha_weights,masked -->
    | group | operation | ... |      <- rendered here
    <!-- /bench -->

holds the rows of that results file (optionally only some groups), as
`markdown_table` renders them; a ``<!-- gpu-check: FILE -->`` block likewise holds
a ``benchmarks/gpu_check.py --json`` file as `gpu_check_table` renders it. ``python -m attnzoo.bench._docs docs/performance.md``
rewrites every block from its file; tests/test_bench.py checks that the committed docs
equal that rendering, so a figure in the docs is always one that a run wrote.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ._core import format_ratio, format_value

__all__ = ["markdown_table", "gpu_check_table", "render_blocks", "BLOCK", "GPU_BLOCK"]

BLOCK = re.compile(r"(<!-- bench: (?P<file>\S+)(?: groups=(?P<groups>\S+))? -->\n)(?P<body>.*?)(<!-- /bench -->)",
                   re.S)


def markdown_table(report: dict[str, Any], groups: list[str] | None = None) -> str:
    """The rows of ``report`` (from ``--json``) as a Markdown table, plus a line on the machine."""
    lines = ["| group | operation | shape | attnzoo | reference | ratio |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if groups and r["group"] not in groups:
            continue
        if r.get("error"):
            cells = [r["group"], r["operation"], r["shape"], f"error: {r['error']}", "", ""]
        else:
            cells = [r["group"], r["operation"], r["shape"], format_value(r["attnzoo"], r["unit"]),
                     format_value(r["reference"], r["unit"]), format_ratio(r["ratio"])]
        lines.append("| " + " | ".join(cells) + " |")
    m, o = report["machine"], report["options"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['threads']} thread(s), torch {m['torch']}, device {m['device']}, "
                 f"dtype {o.get('dtype', 'float32')}; medians of {o['repeats']} interleaved samples; "
                 f"`{report['equivalent_command']}`")
    return "\n".join(lines) + "\n"


def gpu_check_table(report: dict[str, Any]) -> str:
    """The rows of a ``benchmarks/gpu_check.py --json`` file: issue 10's GPU table, with goals."""
    lines = ["| path | shape | dtype | attnzoo | reference | ratio | goal | met | also |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| error: {r['error']} | | | | | | | | |")
            continue
        goal, met, also = _gpu_goal(r)
        unit = "s/token" if "same_tokens" in r else "s"
        cells = [r["path"], r["shape"], r["dtype"], format_value(r["attnzoo_s"], unit),
                 f"{format_value(r['reference_s'], unit)} ({r['reference']})", format_ratio(r["ratio"]),
                 goal, "yes" if met else "**no**", also]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{report['device']}, torch {report['torch']}; medians of interleaved samples; "
                 f"`{report.get('command', 'python benchmarks/gpu_check.py --json FILE')}`")
    return "\n".join(lines) + "\n"


def _gpu_goal(r: dict[str, Any]) -> tuple[str, bool, str]:
    """(goal, whether this row meets it, other findings) for one gpu_check row (issue 10's goals)."""
    if "same_tokens" in r:
        tokens = (f"float32 tokens ({r['float32_tokens']}) identical: {'yes' if r['same_tokens_float32'] else 'no'}; "
                  f"{r['dtype']} tokens equal to uncached: {r['tokens_agree']:.1%}; "
                  f"CUDA graph: {'yes' if r['cuda_graph'] else 'no'}")
        return "≥ 5x and ≤ 1 ms/token", r["ratio"] >= 5 and r["attnzoo_s"] <= 1e-3, tokens
    if r["path"].startswith("MHA fwd+bwd, causal + key padding"):
        return "≥ 1/1.3 = 0.77x", r["ratio"] >= 1 / 1.3, ""
    also, met = "", r["ratio"] >= 1.0
    if r.get("memory_ratio") is not None:
        also = f"peak memory {r['attnzoo_mb']:.0f} vs {r['reference_mb']:.0f} MiB ({r['memory_ratio']:.1f}x less; goal ≥ 3x)"
        met = met and r["memory_ratio"] >= 3
    return "≥ 1.0x" + (", memory ≤ 1/3" if also else ""), met, also


GPU_BLOCK = re.compile(r"(<!-- gpu-check: (?P<file>\S+) -->\n)(?P<body>.*?)(<!-- /gpu-check -->)", re.S)


def render_blocks(text: str, root: Path) -> str:
    """``text`` with every bench and gpu-check block re-rendered from its results file
    (paths relative to ``root``)."""

    def render(m: re.Match[str]) -> str:
        report = json.loads((root / m["file"]).read_text())
        groups = m["groups"].split(",") if m["groups"] else None
        return m.group(1) + markdown_table(report, groups) + m.group(5)

    def render_gpu(m: re.Match[str]) -> str:
        return m.group(1) + gpu_check_table(json.loads((root / m["file"]).read_text())) + m.group(4)

    return GPU_BLOCK.sub(render_gpu, BLOCK.sub(render, text))


def main(argv: list[str]) -> int:
    """Rewrite the bench blocks of each Markdown file given (paths relative to the current directory)."""
    from .._io import atomic_write_text

    for name in argv:
        path = Path(name)
        text = path.read_text()
        new = render_blocks(text, Path.cwd())
        if new != text:
            atomic_write_text(path, new)
            print(f"updated {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
