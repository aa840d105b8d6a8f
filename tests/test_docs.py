"""The docs stay true: the API reference builds with warnings as errors, covers the public
API, and every row of docs/integration.md names tests that exist."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attnzoo

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def table_rows(text: str) -> list[list[str]]:
    """Body rows of every Markdown table: lists of stripped cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|(\s*-+\s*\|)+", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [r for r in rows if r[:2] != ["Tool", "Works"]]


def test_integration_rows_are_backed_by_existing_tests() -> None:
    rows = table_rows((DOCS / "integration.md").read_text())
    assert len(rows) >= 15
    defined: dict[str, set[str]] = {}
    for tool, works, *rest in rows:
        refs = TEST_REF.findall(" ".join(rest))
        if works.startswith("yes"):
            assert refs, f"row {tool!r} says yes but names no test"
        for path, name in refs:
            if path not in defined:
                tree = ast.parse((ROOT / path).read_text())
                defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in defined[path], f"row {tool!r} names {path}::{name}, which does not exist"


def test_api_reference_covers_the_public_api() -> None:
    pages = {p.name: p.read_text() for p in (DOCS / "api").glob("*.md")}
    rendered = set(re.findall(r"^::: ([\w.]+)$", "\n".join(pages.values()), flags=re.M))
    for name in attnzoo.__all__:
        obj = getattr(attnzoo, name)
        module = obj.__name__ if isinstance(obj, type(attnzoo)) else obj.__module__
        assert module in rendered, f"attnzoo.{name} ({module}) has no API page"
        assert f"`{name}`" in pages["index.md"] or f"`az.{name}`" in pages["index.md"], name
    assert {"attnzoo.maps.recorder", "attnzoo.viz", "attnzoo.transformer", "attnzoo.factory"} <= rendered


def test_api_reference_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """A docstring griffe cannot parse, or a broken cross-reference, fails this test."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "site" / "api" / "gates" / "index.html").read_text()
    assert "SqueezeExcite" in page and "kernel_size" in page  # the docstrings were rendered
    record = (tmp_path / "site" / "api" / "record" / "index.html").read_text()
    # docs/griffe_doctests.py: bare ">>>" examples become code, not prose with link syntax
    assert '<code class="language-python">&gt;&gt;&gt; import torch, attnzoo as az' in record
    for html in sorted((tmp_path / "site").rglob("*.html")):
        leftovers = rest_leftovers(html.read_text())
        assert not leftovers, f"{html.relative_to(tmp_path)} shows reST as text: {leftovers[:5]}"


CODE = re.compile(r"<(code|pre|script|style)\b.*?</\1>", flags=re.S)
ROLE = re.compile(r":(?:py:)?(?:func|meth|mod|class|attr|data|exc|obj|const):(?:`|&#96;)?")


def rest_leftovers(html: str) -> list[str]:
    """Sphinx roles and reST ``::`` markers left in an HTML page's prose (code excluded)."""
    text = re.sub(r"<[^>]+>", " ", CODE.sub(" ", html))
    found = ROLE.findall(text)
    found += [m.group(0) for m in re.finditer(r"\S*::(?!\w)\S*", text)]
    return found


def test_rest_leftovers_finds_roles_and_literal_markers() -> None:
    assert rest_leftovers("<p>see :func:`f` and :mod:`m`</p>") == [":func:`", ":mod:`"]
    assert rest_leftovers("<p>Shapes::</p><pre>a::b</pre>") == ["Shapes::"]
    assert rest_leftovers("<p>ok <code>:func:`f` x::</code> a::b</p>") == []
