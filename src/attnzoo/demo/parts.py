"""The tour's parts, registered in one place, in run order.

To add a part: write ``demo/NAME.py`` with ``run(budget, seed, device, out_dir) -> dict``
(its figures written through ``attnzoo.viz`` / ``attnzoo._io`` into ``out_dir``), give it a
budget in ``common.FULL`` and ``common.QUICK``, and add one ``Part`` below with its help
phrase, its findings (``findings.py``), its page section (``page.py``) and its summary
lines and README table (``tables.py``). ``--only``, ``--help``, the page, the terminal
summary and README then cover it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import dates, findings, gates, league, page, positions, resnet, speech, tables, vision

__all__ = ["Part", "PARTS"]

Results = dict[str, Any]


@dataclass(frozen=True)
class Part:
    """One part of the tour: ``module.run`` trains and measures (looked up at call time)."""

    name: str
    module: ModuleType
    help: str  # what it does, in a phrase, for --help
    findings: Callable[[Results], list[tuple[str, str]]]
    section: Callable[[Results], str]  # HTML
    lines: Callable[[Results], list[str]]  # the summary printed at the end
    markdown: Callable[[Results], str]  # README's table
    in_tour: bool = True  # False: runs only with --only NAME (the default tour leaves it out)

    def run(self, *args: Any) -> Results:
        return self.module.run(*args)


PARTS: dict[str, Part] = {p.name: p for p in (
    Part("vision", vision, "SE and CBAM in a small CNN on cluttered handwritten digits",
         findings.vision_findings, page.vision_section, tables.vision_lines, tables.vision_md),
    Part("resnet", resnet, "SE and CBAM added to a ResNet by add_attention, per block or after every conv",
         findings.resnet_findings, page.resnet_section, tables.resnet_lines, tables.resnet_md),
    Part("speech", speech, "temporal attention for speaker identification on Japanese Vowels",
         findings.speech_findings, page.speech_section, tables.speech_lines, tables.speech_md),
    Part("dates", dates, "a cross-attention Transformer that normalises written dates",
         findings.dates_findings, page.dates_section, tables.dates_lines, tables.dates_md),
    Part("positions", positions, "what position schemes (learned, sinusoidal, RoPE, ALiBi, none) buy in a "
         "character-level Transformer, and beyond its training length",
         findings.positions_findings, page.positions_section, tables.positions_lines, tables.positions_md),
    Part("gates", gates, "the league of every add_attention gate in the small ResNet, with its cost (only with "
         "--only gates: not in the default tour)", league.league_findings, league.league_section,
         league.league_lines, league.league_md, in_tour=False),
)}
