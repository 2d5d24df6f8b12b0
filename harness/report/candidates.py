"""The report's candidates section: size versus score, the Pareto front, and what pruning kept.

``bench candidate`` hands the report its table as plain data (:class:`CandidateTable`, the part
of ``candidates.json`` the page shows), so the report never imports the loop, the engine or
torch. The rows are defined here, downstream, and the loop's summary builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field

from bench.compare.gate import INCONCLUSIVE
from bench.errors import UserError
from bench.modelfile import read_model_file
from bench.pruning_record import PruningRecord, read_pruning
from bench.records import Interval
from bench.report import charts
from bench.report.expert_map import expert_map

_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


class Divergence(BaseModel):
    """A candidate's headline divergence from the base, over all texts: mean KL and top-1 agreement."""

    model_config = ConfigDict(extra="forbid")
    mean_kl: Interval
    top1_agreement: Interval


class CandidateRow(BaseModel):
    """One line of the size-vs-score table: the base or one candidate."""

    model_config = ConfigDict(extra="forbid")
    label: str
    role: Literal["base", "candidate"]
    mix: str | None = None
    origin: str | None = None  # how the plan asked for it
    experts_kept: int | None = None
    experts_total: int
    criterion: str | None = None  # how the kept experts were chosen (candidates only)
    precision: str
    size_bytes: int | None = None
    size_ratio: float | None = None  # size / base size
    scores: dict[str, float | None] = Field(default_factory=dict)
    mean_score: float | None = None
    valid: bool | None = None
    verdict: str | None = None  # gate verdict; the base has none
    verdict_line: str | None = None
    pareto: bool = False
    checkpoint: str | None = None
    pruning: str | None = None  # pruning.json of the pruned checkpoint (before any FP8 step)
    run_dir: str | None = None
    gate_json: str | None = None
    error: str | None = None
    divergence: Divergence | None = None  # over all texts, when the plan measured it


class CandidateTable(BaseModel):
    """What the report shows of a candidate loop; ``candidates.json`` validates as one."""

    model_config = ConfigDict(extra="ignore")
    name: str
    base: str
    packs: list[str]
    score: str
    rows: list[CandidateRow]
    pareto: list[str]


def load_candidate_table(path: Path) -> CandidateTable:
    """The table part of a ``candidates.json`` written by ``bench candidate``."""
    return read_model_file(path, CandidateTable, "candidate summary")


def _unit(n_bytes: float) -> tuple[str, int]:
    return next(((name, scale) for name, scale in _UNITS if n_bytes >= scale), ("B", 1))


def size_text(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    name, scale = _unit(n_bytes)
    return f"{n_bytes} B" if scale == 1 else f"{n_bytes / scale:.2f} {name}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def verdict_text(row: CandidateRow) -> str:
    if row.role == "base":
        return "(baseline, invalid)" if row.valid is False else "(baseline)"
    return row.verdict or ("error" if row.error else "-")


def table_cells(packs: Sequence[str], rows: Sequence[CandidateRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the size-vs-score table (Markdown, terminal and the report share it)."""
    measured = any(row.divergence is not None for row in rows)
    header = ["candidate", "size", "vs base", "experts kept", "precision",
              *(["KL from base (nats) [95%]", "top-1 agreement"] if measured else []),
              *packs, "mean", "verdict", "Pareto"]
    cells = []
    for row in rows:
        experts = f"{row.experts_kept}/{row.experts_total}" if row.experts_kept is not None else "-"
        ratio = f"{row.size_ratio:.3f}x" if row.size_ratio is not None else "-"
        divergence: list[str] = []
        if measured:
            if row.role == "base":
                divergence = ["(reference)", "(reference)"]
            else:
                divergence = ([row.divergence.mean_kl.text(3), row.divergence.top1_agreement.text(3, "f")]
                              if row.divergence else ["-", "-"])
        cells.append([row.label, size_text(row.size_bytes), ratio, experts, row.precision, *divergence,
                      *[_num(row.scores.get(p)) for p in packs], _num(row.mean_score), verdict_text(row),
                      "yes" if row.pareto else ""])
    return header, cells


def candidate_frame(table: CandidateTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The size-vs-score table for the page, and a CSS class per cell (front rows, verdicts)."""
    header, cells = table_cells(table.packs, table.rows)
    frame = pd.DataFrame(cells, columns=header).set_index("candidate")
    frame["Pareto"] = ["yes" if row.pareto else "no" for row in table.rows]
    classes = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for position, row in enumerate(table.rows):
        if row.pareto:
            classes.iloc[position, :] = "front"
        if row.verdict == INCONCLUSIVE:
            continue  # nothing failed, nothing shown: neither colour
        if row.error or (row.verdict and row.verdict != "Pass"):
            classes.iloc[position, frame.columns.get_loc("verdict")] = "worse"
        elif row.verdict == "Pass":
            classes.iloc[position, frame.columns.get_loc("verdict")] = "better"
    return frame, classes


def candidate_scatter(table: CandidateTable) -> Markup | None:
    """Size against mean score for every row that has both; None when fewer than one does."""
    rows = [row for row in table.rows if row.size_bytes is not None and row.mean_score is not None]
    if not rows:
        return None
    unit, scale = _unit(max(row.size_bytes or 0 for row in rows))
    base = next((row.label for row in rows if row.role == "base"), None)
    points = [(row.label, (row.size_bytes or 0) / scale, row.mean_score or 0.0) for row in rows]
    return charts.size_score_scatter(points, front=table.pareto, base=base, salt="candidates-scatter",
                                     title="Size versus score", xlabel=f"weights on disk ({unit})")


@dataclass
class ExpertMaps:
    """One pruned checkpoint's heatmaps, and the runs or candidates it belongs to."""

    labels: list[str]
    source: str
    record: PruningRecord
    maps: list[Markup] = field(default_factory=list)


def expert_maps(sources: Sequence[tuple[str, Path]]) -> tuple[list[ExpertMaps], list[str]]:
    """Heatmaps (score, usage) for each ``(label, pruning.json)``; one note per file that failed.

    Sources sharing one file are drawn once under all their labels. A missing or broken file is a
    note in the report, never an exception: the rest of the page is still worth reading.
    """
    found: dict[Path, ExpertMaps] = {}
    notes: list[str] = []
    for label, path in sources:
        key = path.resolve()
        if key in found:
            found[key].labels.append(label)
            continue
        try:
            record = read_pruning(path)
        except UserError as exc:
            notes.append(f"{label}: no expert heatmap: {exc}")
            continue
        entry = ExpertMaps(labels=[label], source=str(path), record=record)
        for measure, what in (("score", f"{record.criterion} score (colour relative to the layer's highest)"),
                              ("usage", "usage: share of calibration tokens routed to the expert")):
            chart = expert_map(record, measure, title=f"{label}: {what}")  # type: ignore[arg-type]
            if chart is not None:
                entry.maps.append(chart)
        found[key] = entry
    return list(found.values()), notes


def pruning_sources(table: CandidateTable) -> list[tuple[str, Path]]:
    """The candidates whose pruning record the loop noted."""
    return [(row.label, Path(row.pruning)) for row in table.rows if row.pruning]
