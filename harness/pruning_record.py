"""``pruning.json`` as the report reads it: which experts a pruned checkpoint kept, and why.

``bench prune`` writes the file beside the pruned weights (see ``bench.engine.compute.prune``),
with its source's identity and the chain of earlier prunes (``bench.engine.planning.lineage``);
``bench run`` copies it into the run directory (``bench.run.checkpoint_facts``), where the report
reads it. The report runs without torch or the engine, so this reader is the harness's own:
lenient about what it does not draw (extra keys, records from before usage was stored) and strict
about what it does, so a broken file becomes one line in the report instead of a wrong picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.errors import UserError
from bench.modelfile import read_model_file

PRUNING_FILE = "pruning.json"  # beside the pruned weights, and copied into each run directory served from them


class PrunedLayer(BaseModel):
    """One sparse layer: the selection score and routing figures of every original expert."""

    model_config = ConfigDict(extra="ignore")
    layer: int
    kept: list[int]
    scores: list[float] = Field(min_length=1)  # the criterion's score, higher is more worth keeping
    usage: list[float] | None = None  # share of calibration tokens routed to each expert
    frequency: list[float] | None = None  # calibration tokens routed to each expert

    @model_validator(mode="after")
    def _consistent(self) -> PrunedLayer:
        n = len(self.scores)
        for name in ("usage", "frequency"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} experts")
        outside = [e for e in self.kept if not 0 <= e < n]
        if outside:
            raise ValueError(f"kept ids {outside} are outside 0..{n - 1}")
        return self


class CheckpointIdentity(BaseModel):
    """The checkpoint a prune read, by cheap hashes: its config, weight index and safetensors headers."""

    model_config = ConfigDict(extra="ignore")
    path: str | None = None
    config_sha256: str
    index_sha256: str | None = None  # absent for a single-file checkpoint
    headers_sha256: str  # every shard's name and raw header (names, dtypes, shapes, offsets), in name order
    quantization: str | None = None  # "block FP8 128x128" for an FP8 source

    def short(self) -> str:
        return f"config {self.config_sha256[:12]}, headers {self.headers_sha256[:12]}"


class KeptExperts(BaseModel):
    """One layer's kept expert ids, numbered as in that prune's source."""

    model_config = ConfigDict(extra="ignore")
    layer: int
    kept: list[int]


class LineageStep(BaseModel):
    """One prune of a chain: what it read, how it chose, and what it kept."""

    model_config = ConfigDict(extra="ignore")
    source: CheckpointIdentity | None = None  # records from before lineage was stored have none
    base_model: str | None = None
    family: str | None = None
    criterion: str = "reap"
    selection: str = "per-layer"
    seed: int | None = None
    n_experts_before: int
    n_experts_after: int
    calibration_hash: str | None = None
    calibration_name: str | None = None
    kept: list[KeptExperts] = Field(default_factory=list)

    def summary(self) -> str:
        """One line for the report: counts, how experts were chosen, and on what."""
        text = f"{self.n_experts_before} -> {self.n_experts_after} experts ({self.criterion}, {self.selection}"
        if self.calibration_name or self.calibration_hash:
            text += f"; calibration {self.calibration_name or ''} {(self.calibration_hash or '')[:12]}".rstrip()
        text += ")"
        where = self.source.path if self.source and self.source.path else self.base_model
        return f"{text} from {where}" if where else text


class DomainCoverage(BaseModel):
    """One calibration dataset's router gate mass that lands on dropped experts (see ``CoverageRecord``)."""

    model_config = ConfigDict(extra="ignore")
    samples: int = Field(ge=0)
    tokens: int = Field(ge=0)
    dropped_mass_mean: float = Field(ge=0, le=1)  # mean over the sparse layers of the per-layer share
    dropped_mass_max: float = Field(ge=0, le=1)  # the worst layer's share
    worst_layer: int  # decoder layer index of that worst layer
    dropped_mass_per_layer: list[float] = Field(default_factory=list)  # in the order of the record's layers


class CoverageRecord(BaseModel):
    """Coverage predicted before serving: per calibration dataset, the gate mass pruning removes.

    Scoring routes every calibration token through every sparse layer's router; the served top-k
    weights of a dataset's tokens, summed per expert, say what share of that dataset's gate mass
    sat on experts the prune drops (the base loses none by definition). A dataset whose mean
    share passes ``threshold`` is flagged: its kind of input lost most of its experts.
    """

    model_config = ConfigDict(extra="ignore")
    threshold: float = Field(ge=0, le=1)
    domains: dict[str, DomainCoverage]
    # Mean over the sparse layers of the share of experts dropped: what an evenly routed domain would lose.
    dropped_experts_share: float | None = Field(default=None, ge=0, le=1)

    def flagged(self) -> list[str]:
        """Labels of the datasets whose mean dropped share passes the threshold, worst first."""
        over = [label for label, d in self.domains.items() if d.dropped_mass_mean > self.threshold]
        return sorted(over, key=lambda label: -self.domains[label].dropped_mass_mean)

    def warnings(self) -> list[str]:
        """One line per flagged dataset, with what to change."""
        return [dead_category_line(label, self.domains[label], self.threshold) for label in self.flagged()]


def dead_category_line(label: str, domain: DomainCoverage, threshold: float) -> str:
    """The warning ``bench prune`` and the candidate loop print for one flagged dataset."""
    return (
        f"warning: dead category: calibration domain {label!r} loses {domain.dropped_mass_mean:.1%} of its router "
        f"gate mass to dropped experts (mean over layers; worst layer {domain.worst_layer}: "
        f"{domain.dropped_mass_max:.1%}; threshold {threshold * 100:g}%): keep more experts (--keep/--compression) "
        "or give this kind of input a larger share of the calibration mix"
    )


class PruningRecord(BaseModel):
    """The parts of ``pruning.json`` the report shows."""

    model_config = ConfigDict(extra="ignore")
    version: int = 1
    base_model: str | None = None
    family: str | None = None
    criterion: str = "reap"
    selection: str = "per-layer"
    seed: int | None = None
    n_experts_before: int
    n_experts_after: int
    calibration: dict[str, Any] | None = None
    layers: list[PrunedLayer] = Field(min_length=1)
    source: CheckpointIdentity | None = None  # the checkpoint this prune read
    chain: list[LineageStep] = Field(default_factory=list)  # earlier prunes of that source, oldest first
    coverage: CoverageRecord | None = None  # records from before coverage was measured have none

    def as_step(self) -> LineageStep:
        """This prune as one link of a later prune's chain (per-expert figures left out)."""
        calibration = self.calibration or {}
        recipe = calibration.get("recipe")
        return LineageStep(
            source=self.source, base_model=self.base_model, family=self.family, criterion=self.criterion,
            selection=self.selection, seed=self.seed, n_experts_before=self.n_experts_before,
            n_experts_after=self.n_experts_after, calibration_hash=calibration.get("hash"),
            calibration_name=recipe.get("name") if isinstance(recipe, dict) else None,
            kept=[KeptExperts(layer=layer.layer, kept=layer.kept) for layer in self.layers],
        )

    def lineage(self) -> list[LineageStep]:
        """Every prune from the first source to this one, oldest first."""
        return [*self.chain, self.as_step()]

    @property
    def stacked(self) -> bool:
        return bool(self.chain)


def read_pruning(path: Path) -> PruningRecord:
    """Parse and check one ``pruning.json``; any problem is a UserError naming the file and field."""
    return read_model_file(path, PruningRecord, "pruning record")


def coverage_warnings(path: Path) -> list[str]:
    """The dead-category lines of a stored ``pruning.json``; none when it has no coverage or cannot be read."""
    try:
        record = read_pruning(path)
    except UserError:  # a cached step's record: its problems are the report's to show, not the loop's to stop on
        return []
    return record.coverage.warnings() if record.coverage else []


def pruning_beside(checkpoint: str | Path | None) -> Path | None:
    """The ``pruning.json`` beside a checkpoint's weights, when the folder is here and has one."""
    if not checkpoint:
        return None
    path = Path(checkpoint).expanduser() / PRUNING_FILE
    try:
        return path if path.is_file() else None
    except OSError:  # an unreadable folder: nothing to show, and nothing to fail on
        return None
