"""The committed data-flow diagrams of docs/figures/diagrams/, and the code that remakes them.

`python -m attnzoo.viz.diagrams docs/figures/diagrams` writes, for each entry of
`MECHANISMS`, `<name>.json` (the `DataflowGraph`: nodes, edges, shapes) and `<name>.svg`
(drawn from that graph; its SVG description holds the JSON's sha256), plus
`fingerprint.json` (matplotlib version and font the SVGs were drawn with). The tests
compare the JSON everywhere and the SVG bytes only where the fingerprint matches, since
glyph outlines depend on the fonts. Every example uses batch 2 and 8×8 maps with 64
channels (MHA: E = 32, 4 heads, L = S = 5; temporal: T = 7, D = 16).

`diagram_section(out_dir)` writes the SVGs (only) beside a report page and returns the
HTML section that shows them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from html import escape
from pathlib import Path

import torch
from torch import nn

from .. import attention, gates, temporal
from .._io import atomic_write_text
from .dataflow import DataflowGraph, mechanism_graph

__all__ = ["MECHANISMS", "diagram_graphs", "write_diagrams", "diagram_section", "fingerprint"]

_MAP = (2, 64, 8, 8)  # (B, C, H, W)


def _seq(*shape: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.zeros(shape),)


def _mha() -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))


# name -> (title, module builder, example builder)
MECHANISMS: dict[str, tuple[str, Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "se": ("Squeeze-and-Excitation: SqueezeExcite(64, reduction=16)", lambda: gates.SqueezeExcite(64), _seq(*_MAP)),
    "channel": ("CBAM channel attention: ChannelAttention(64)", lambda: gates.ChannelAttention(64), _seq(*_MAP)),
    "spatial": ("CBAM spatial attention: SpatialAttention(7)", lambda: gates.SpatialAttention(7), _seq(*_MAP)),
    "cbam": ("CBAM(64): channel, then spatial", lambda: gates.CBAM(64), _seq(*_MAP)),
    "mha": ("MultiHeadAttention(32, 4, batch_first=True)",
            lambda: attention.MultiHeadAttention(32, 4, batch_first=True), _mha),
    "temporal": ("TemporalAttention(16), additive score", lambda: temporal.TemporalAttention(16), _seq(2, 7, 16)),
    "eca": ("ECA(64)", lambda: gates.ECA(64), _seq(*_MAP)),
    "ese": ("EffectiveSE(64)", lambda: gates.EffectiveSE(64), _seq(*_MAP)),
    "srm": ("SRM(64)", lambda: gates.SRM(64), _seq(*_MAP)),
    "gather_excite": ("GatherExcite(64)", lambda: gates.GatherExcite(64), _seq(*_MAP)),
    "coord": ("CoordAttention(64)", lambda: gates.CoordAttention(64), _seq(*_MAP)),
    "bam": ("BAM(64)", lambda: gates.BAM(64), _seq(*_MAP)),
    "triplet": ("TripletAttention(64)", lambda: gates.TripletAttention(64), _seq(*_MAP)),
    "gc": ("GlobalContext(64)", lambda: gates.GlobalContext(64), _seq(*_MAP)),
    "nonlocal": ("NonLocal(64)", lambda: gates.NonLocal(64), _seq(*_MAP)),
    "simam": ("SimAM", lambda: gates.SimAM(), _seq(*_MAP)),
    "sk": ("SelectiveKernel(64)", lambda: gates.SelectiveKernel(64), _seq(*_MAP)),
    "splat": ("SplitAttention(64)", lambda: gates.SplitAttention(64), _seq(*_MAP)),
}


def diagram_graphs(names: list[str] | None = None) -> dict[str, DataflowGraph]:
    """The `DataflowGraph` of each named entry of `MECHANISMS` (all by default), in eval mode."""
    names = list(MECHANISMS) if names is None else names
    unknown = [n for n in names if n not in MECHANISMS]
    if unknown:
        raise ValueError(f"names must be keys of MECHANISMS {sorted(MECHANISMS)}, got {unknown}")
    torch.manual_seed(0)
    out = {}
    for n in names:
        title, build, example = MECHANISMS[n]
        out[n] = mechanism_graph(build().eval(), example(), title=title)
    return out


def fingerprint() -> dict[str, str]:
    """What SVG bytes depend on besides the graph: matplotlib's version and the font file
    (its name and a hash of its bytes, since two installs may ship different versions)."""
    import matplotlib
    from matplotlib import font_manager

    font = Path(font_manager.findfont(font_manager.FontProperties(family=["sans-serif"])))
    return {"matplotlib": matplotlib.__version__, "font": font.name,
            "font_sha256": hashlib.sha256(font.read_bytes()).hexdigest()[:16]}


def write_diagrams(out_dir: str | Path, names: list[str] | None = None, *, descriptions: bool = True) -> list[Path]:
    """Write `<name>.svg` for each mechanism (all by default) into `out_dir`, and with
    `descriptions=True` also `<name>.json` and `fingerprint.json`; return the paths
    written. Files are written atomically; these names in `out_dir` are replaced."""
    from .diagram import dataflow_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, graph in diagram_graphs(names).items():
        if descriptions:
            atomic_write_text(out / f"{name}.json", graph.to_json())
            written.append(out / f"{name}.json")
        dataflow_figure(graph, out / f"{name}.svg").clear()
        written.append(out / f"{name}.svg")
    if descriptions:
        atomic_write_text(out / "fingerprint.json", json.dumps(fingerprint(), indent=1, sort_keys=True) + "\n")
        written.append(out / "fingerprint.json")
    return written


def diagram_section(out_dir: str | Path, names: list[str] | None = None) -> str:
    """Write the diagrams' SVGs into `out_dir` and return an HTML section (`<h2>` and one
    `<figure>` per mechanism, images by file name relative to `out_dir`) for a report page."""
    paths = write_diagrams(out_dir, names, descriptions=False)
    titles = {n: MECHANISMS[n][0] for n in (list(MECHANISMS) if names is None else names)}
    figs = "".join(f'<figure><img src="{escape(p.name)}" alt="{escape(titles[p.stem])}">'
                   f"<figcaption>{escape(titles[p.stem])}</figcaption></figure>" for p in paths)
    return ("\n<h2>How each mechanism computes</h2>\n<p>Drawn from each module's own torch.fx trace with "
            f"shapes propagated on an example input (B = batch).</p>\n<div class=\"grid\">{figs}</div>")


def main(argv: list[str] | None = None) -> int:
    """`python -m attnzoo.viz.diagrams OUT_DIR`: regenerate the diagrams into OUT_DIR."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m attnzoo.viz.diagrams OUT_DIR", file=sys.stderr)
        return 2
    for p in write_diagrams(args[0]):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
