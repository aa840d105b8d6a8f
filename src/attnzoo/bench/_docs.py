"""Tables in the docs rendered from committed ``attnzoo bench --json`` files, never typed by hand.

A block in a Markdown file::

    <!-- bench: docs/bench/speed-cpu.json groups=mha_weights,masked -->
    | group | operation | ... |      <- rendered here
    <!-- /bench -->

holds the rows of that results file (optionally only some groups), as
:func:`markdown_table` renders them. ``python -m attnzoo.bench._docs docs/performance.md``
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

__all__ = ["markdown_table", "render_blocks", "BLOCK"]

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


def render_blocks(text: str, root: Path) -> str:
    """``text`` with every bench block re-rendered from its results file (paths relative to ``root``)."""

    def render(m: re.Match[str]) -> str:
        report = json.loads((root / m["file"]).read_text())
        groups = m["groups"].split(",") if m["groups"] else None
        return m.group(1) + markdown_table(report, groups) + m.group(5)

    return BLOCK.sub(render, text)


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
