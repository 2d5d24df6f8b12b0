"""Charts for the HTML report, drawn by matplotlib's SVG backend and returned as inline SVG text.

Inline SVG keeps the report one self-contained file that needs no script, font or network:
text is emitted as SVG text in a generic sans-serif family (``svg.fonttype: none``), and each
chart gets its own hash salt so the ids its clip paths reference never collide with another
chart's on the same page. matplotlib escapes every label it writes, so run ids and pack names
from disk cannot inject markup.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib import rc_context
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

# text.parse_math off: a "$" in a run id or candidate label is text, not a TeX formula that may not parse.
_RC: dict[Any, Any] = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9, "axes.spines.top": False,
                       "axes.spines.right": False, "text.parse_math": False}
_PALETTE = ("#3b6ea8", "#d9822b", "#4f9a5d", "#b5485d", "#7c5ea8", "#8c7a5b", "#5b8c8c", "#a86f3b")


def _to_svg(figure: Figure, salt: str) -> Markup:
    buffer = io.StringIO()
    with rc_context({**_RC, "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})  # constrained layout already fits
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # drop the XML declaration and doctype: not allowed inline

    tag = f'<svg class="chart" role="img" aria-label="{salt}"'
    return Markup(text.replace("<svg", tag, 1))  # noqa: S704 - matplotlib output, labels escaped by it


def _figure(width: float, height: float) -> Figure:
    with rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def heatmap(
    frame: pd.DataFrame, *, title: str, salt: str, diverging: bool = False, value_format: str = "{:.2f}"
) -> Markup:
    """Annotated heatmap of ``frame`` (rows x columns); NaN cells stay blank.

    Sequential 0..1 colours for scores; ``diverging`` centres a red-blue scale on zero for changes.
    Every element is vector: no embedded raster image, so the page loads nothing, not even data URLs.
    """
    values = frame.to_numpy(dtype=float)
    rows, cols = values.shape
    with rc_context(_RC):
        # Room below the cells for the slanted column labels (about 0.03 in per character at
        # 20 degrees), or constrained layout squeezes the cells to nothing on a one-row map.
        label_height = 0.03 * max((len(str(c)) for c in frame.columns), default=0)
        figure = _figure(max(3.6, 1.6 + 1.15 * cols), 0.8 + 0.28 * rows + label_height)
        axes = figure.subplots()
        norm: Normalize
        if diverging:
            finite = np.abs(values[np.isfinite(values)])
            bound = max(float(finite.max()) if finite.size else 0.0, 0.05)
            cmap, norm = "RdBu", TwoSlopeNorm(0.0, -bound, bound)
        else:
            cmap, norm = "viridis", Normalize(0.0, 1.0)
        # pcolormesh, not imshow: imshow embeds a PNG in the SVG, and the report stays vector-only.
        mesh = axes.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, norm=norm, edgecolors="white", linewidth=0.5)
        axes.set_xlim(0, cols)
        axes.set_ylim(rows, 0)
        axes.set_xticks(np.arange(cols) + 0.5, [str(c) for c in frame.columns], rotation=20, ha="right")
        axes.set_yticks(np.arange(rows) + 0.5, [str(r) for r in frame.index])
        axes.spines[:].set_visible(False)
        for row in range(rows):
            for col in range(cols):
                value = values[row, col]
                if np.isfinite(value):
                    rgba = mesh.cmap(mesh.norm(value))
                    light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
                    axes.text(col + 0.5, row + 0.5, value_format.format(value), ha="center", va="center", fontsize=8,
                              color="black" if light else "white")
        # No colour bar: matplotlib rasterises its gradient; every cell carries its value as text.
        figure.suptitle(title, fontsize=10)  # the layout fits a figure title; a long axes title would be cut
    return _to_svg(figure, salt)


def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    salt: str,
    ylabel: str = "mean",
) -> Markup:
    """One group of bars per category, one bar per series, with interval whiskers.

    ``series`` maps a run label to (means, lows, highs); NaN means are left out.
    """
    count = max(len(series), 1)
    width = 0.8 / count
    positions = np.arange(len(categories))
    with rc_context(_RC):
        figure = _figure(max(4.0, 0.9 + 0.55 * len(categories) * count), 2.8)
        axes = figure.subplots()
        for index, (label, (means, lows, highs)) in enumerate(series.items()):
            mean = np.asarray(means, dtype=float)
            low = np.asarray(lows, dtype=float)
            high = np.asarray(highs, dtype=float)
            errors = np.vstack([np.where(np.isfinite(low), mean - low, 0.0), np.where(np.isfinite(high), high - mean, 0.0)])
            axes.bar(
                positions + (index - (count - 1) / 2) * width, np.nan_to_num(mean), width, yerr=np.clip(errors, 0, None),
                label=label, color=_PALETTE[index % len(_PALETTE)], capsize=2, error_kw={"elinewidth": 0.8},
            )  # fmt: skip
        slanted = len(categories) > 5
        axes.set_xticks(positions, list(categories), rotation=20 if slanted else 0, ha="right" if slanted else "center")
        axes.set_ylim(0, 1.05)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _to_svg(figure, salt)


def box_plots(groups: Mapping[str, Mapping[str, Sequence[float]]], *, title: str, salt: str, ylabel: str) -> Markup:
    """Box plots side by side: one cluster per group (pack), one box per run within it."""
    runs = list(dict.fromkeys(run for by_run in groups.values() for run in by_run))
    colour = {run: _PALETTE[index % len(_PALETTE)] for index, run in enumerate(runs)}
    width = 0.8 / max(len(runs), 1)
    data: list[np.ndarray] = []
    positions: list[float] = []
    colours: list[str] = []
    for cluster, by_run in enumerate(groups.values()):
        for index, run in enumerate(runs):
            if run in by_run:
                data.append(np.asarray(by_run[run], dtype=float))
                positions.append(cluster + (index - (len(runs) - 1) / 2) * width)
                colours.append(colour[run])
    with rc_context(_RC):
        figure = _figure(max(4.0, 1.5 + 0.35 * len(data)), 2.8)
        axes = figure.subplots()
        if data:
            boxes = axes.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True, showfliers=False)
            for patch, face in zip(boxes["boxes"], colours, strict=True):
                patch.set_facecolor(face)
                patch.set_alpha(0.75)
            axes.set_xticks(range(len(groups)), list(groups))
            for run in runs:
                axes.plot([], [], color=colour[run], linewidth=6, label=run)
            axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes.set_ylabel(ylabel)
        axes.set_title(title)
    return _to_svg(figure, salt)


def size_score_scatter(
    points: Sequence[tuple[str, float, float]], *, front: Sequence[str], base: str | None, title: str, salt: str,
    xlabel: str,
) -> Markup:
    """Size (x) against score (y), one labelled point per checkpoint; the Pareto front joined.

    ``points`` are (label, size, score); ``front`` lists the labels on the front in size order.
    The base is drawn as a star so the reader sees where the cuts started from.
    """
    where = {label: (size, score) for label, size, score in points}
    on_front = [label for label in front if label in where]
    with rc_context(_RC):
        figure = _figure(6.0, 3.6)
        axes = figure.subplots()
        others = [label for label in where if label not in on_front and label != base]
        if others:
            axes.scatter([where[o][0] for o in others], [where[o][1] for o in others], s=28, color="#9aa3ad",
                         label="dominated", zorder=2)
        if on_front:
            xs, ys = zip(*(where[label] for label in on_front), strict=True)
            axes.plot(xs, ys, color=_PALETTE[1], linewidth=2, marker="o", markersize=7, label="Pareto front", zorder=3)
        if base is not None and base in where:
            axes.scatter([where[base][0]], [where[base][1]], s=160, marker="*", color=_PALETTE[0],
                         edgecolors="black", linewidths=0.6, label="base", zorder=4)
        for label, (size, score) in where.items():
            axes.annotate(label, (size, score), xytext=(5, 4), textcoords="offset points", fontsize=8)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("mean score")
        axes.margins(x=0.15, y=0.2)
        axes.set_title(title)
        axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _to_svg(figure, salt)
