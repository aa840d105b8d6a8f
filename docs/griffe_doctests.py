"""Griffe extension for the API reference: doctest examples render as code.

The docstrings show examples as bare ``>>>`` lines, as the Python docs do. The Google
docstring parser only treats them as code inside an ``Examples:`` section, so elsewhere
Markdown would read ``rec["0"][0]`` as a link reference and reflow the lines. This puts
each run of ``>>>`` lines at the start of a line (with their ``...`` continuations and
output, up to a blank line) into a fenced ``python`` block before parsing.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    out: list[str] = []
    in_example = in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and not in_example and line.startswith(">>>"):
            out.append("```python")
            in_example = True
        elif in_example and not line.strip():
            out.append("```")
            in_example = False
        out.append(line)
    if in_example:
        out.append("```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
