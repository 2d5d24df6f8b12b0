"""Layers x experts heatmaps of a pruned checkpoint, as inline SVG with one tooltip per cell.

Not drawn with matplotlib like the other charts: a real MoE has thousands of cells (48 layers x
128 experts), each needs its own ``<title>`` with the exact figures, and matplotlib writes a long
path per cell and no titles. ElementTree builds the few elements needed and escapes every text
and attribute it writes (labels come from files on disk); the colours still come from
matplotlib's colormap, the same viridis the subdimension heatmaps use.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Literal

from markupsafe import Markup
from matplotlib import colormaps
from matplotlib.colors import to_hex

from bench.pruning_record import PrunedLayer, PruningRecord

Measure = Literal["score", "usage"]
GRID_WIDTH = 960  # px the grid aims for; cells shrink to fit many experts, never below CELL_MIN
GRID_HEIGHT = 560
CELL_MIN, CELL_MAX = 4, 22
MIN_WIDTH = 600  # the title and legend need this much even over a few experts
LEFT, TOP, BOTTOM = 46, 38, 44  # room for layer labels, title and expert ids, legend
PRUNED_STROKE = "#c0392b"
SWATCHES = 8


def _values(layer: PrunedLayer, measure: Measure) -> list[float] | None:
    return layer.scores if measure == "score" else layer.usage


def _scaled(record: PruningRecord, measure: Measure) -> dict[int, list[float]] | None:
    """Colour positions in [0, 1] per layer, or None when the record lacks the measure.

    Scores are divided by their layer's highest (raw saliencies grow with depth, and per-layer
    selection compares experts within a layer); usage shares share one scale over all layers.
    """
    rows = {layer.layer: _values(layer, measure) for layer in record.layers}
    if any(values is None for values in rows.values()):
        return None
    top = max((max(v) for v in rows.values() if v), default=0.0)
    scaled: dict[int, list[float]] = {}
    for index, values in rows.items():
        assert values is not None
        peak = max(values) if measure == "score" else top
        scaled[index] = [min(max(v / peak, 0.0), 1.0) if peak > 0 and math.isfinite(v) else 0.0 for v in values]
    return scaled


def _tooltip(record: PruningRecord, layer: PrunedLayer, expert: int) -> str:
    """What a cell's hover says; kept terse, as a large model has thousands of cells per map."""
    state = f"kept as expert {layer.kept.index(expert)}" if expert in layer.kept else "pruned"
    text = f"layer {layer.layer}, expert {expert} ({state}): {record.criterion} score {layer.scores[expert]:.6g}"
    if layer.usage is not None:
        text += f"; usage {layer.usage[expert]:.3%}"
    if layer.frequency is not None:
        text += f" ({layer.frequency[expert]:g} tokens)" if layer.usage is not None else f"; {layer.frequency[expert]:g} tokens"
    return text


def _text(parent: ET.Element, x: float, y: float, text: str, anchor: str = "start", size: int = 10) -> None:
    node = ET.SubElement(parent, "text", x=f"{x:g}", y=f"{y:g}", fill="#1d232b")
    node.set("font-size", str(size))
    node.set("text-anchor", anchor)
    node.text = text


def _step(cell: int, room: int) -> int:
    """Label every n-th row or column so labels of ``room`` px never overlap."""
    return next(n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 10**9) if n * cell >= room)


def expert_map(record: PruningRecord, measure: Measure, *, title: str) -> Markup | None:
    """One heatmap: a row per sparse layer, a column per original expert, pruned cells crossed out.

    Returns None when the record has no figures for ``measure`` (usage is missing in old records).
    """
    scaled = _scaled(record, measure)
    if scaled is None:
        return None
    layers = sorted(record.layers, key=lambda layer: layer.layer)
    n_experts = max(len(layer.scores) for layer in layers)
    cw = max(CELL_MIN, min(CELL_MAX, GRID_WIDTH // n_experts))
    ch = max(CELL_MIN, min(CELL_MAX, GRID_HEIGHT // len(layers)))
    width, height = max(LEFT + cw * n_experts + 10, MIN_WIDTH), TOP + ch * len(layers) + BOTTOM
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {width} {height}",
                     width=str(width), height=str(height), role="img")
    svg.set("class", "chart expert-map")
    svg.set("aria-label", title)
    svg.set("font-family", "sans-serif")
    ET.SubElement(svg, "title").text = title
    _text(svg, LEFT, 14, title, size=12)
    cmap = colormaps["viridis"]
    crosses: list[str] = []
    grid = ET.SubElement(svg, "g")
    for row, layer in enumerate(layers):
        y = TOP + row * ch
        if row % _step(ch, 12) == 0:
            _text(svg, LEFT - 4, y + ch / 2 + 3.5, f"L{layer.layer}", anchor="end")
        for expert, position in enumerate(scaled[layer.layer]):
            x = LEFT + expert * cw
            kept = expert in layer.kept
            cell = ET.SubElement(grid, "rect", x=str(x), y=str(y), width=str(cw), height=str(ch),
                                 fill=to_hex(cmap(position)))
            cell.set("class", "kept" if kept else "pruned")
            if not kept:
                cell.set("fill-opacity", "0.4")
                crosses.append(f"M{x + 1} {y + 1}L{x + cw - 1} {y + ch - 1}M{x + cw - 1} {y + 1}L{x + 1} {y + ch - 1}")
            ET.SubElement(cell, "title").text = _tooltip(record, layer, expert)
    if crosses:
        path = ET.SubElement(svg, "path", d="".join(crosses), stroke=PRUNED_STROKE, fill="none")
        path.set("stroke-width", "1.2" if min(cw, ch) >= 8 else "0.8")
        path.set("pointer-events", "none")  # the tooltip belongs to the cell underneath
    label_step = _step(cw, 22)
    for expert in range(0, n_experts, label_step):
        _text(svg, LEFT + expert * cw + cw / 2, TOP - 4, str(expert), anchor="middle", size=9)
    _legend(svg, record, measure, TOP + ch * len(layers) + 14)
    return Markup(ET.tostring(svg, encoding="unicode"))  # noqa: S704 - ElementTree escaped every text and attribute


def _legend(svg: ET.Element, record: PruningRecord, measure: Measure, y: int) -> None:
    cmap = colormaps["viridis"]
    low, high = ("0", "layer max") if measure == "score" else ("0%", _top_usage(record))
    _text(svg, LEFT, y + 10, low, anchor="end", size=9)
    for index in range(SWATCHES):
        ET.SubElement(svg, "rect", x=str(LEFT + 4 + index * 14), y=str(y), width="14", height="12",
                      fill=to_hex(cmap(index / (SWATCHES - 1))))
    right = LEFT + 8 + SWATCHES * 14
    _text(svg, right, y + 10, high, size=9)
    mark = right + 64
    sample = ET.SubElement(svg, "rect", x=str(mark), y=str(y), width="12", height="12", fill=to_hex(cmap(0.5)))
    sample.set("fill-opacity", "0.4")
    cross = ET.SubElement(svg, "path", d=f"M{mark + 1} {y + 1}L{mark + 11} {y + 11}M{mark + 11} {y + 1}L{mark + 1} {y + 11}",
                          stroke=PRUNED_STROKE, fill="none")
    cross.set("stroke-width", "1.2")
    counts = sorted({len(layer.kept) for layer in record.layers})
    kept = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    _text(svg, mark + 18, y + 10, f"pruned (kept {kept} of {record.n_experts_before} per layer, {record.selection})", size=9)


def _top_usage(record: PruningRecord) -> str:
    return f"{max(max(layer.usage or [0.0]) for layer in record.layers):.1%}"
