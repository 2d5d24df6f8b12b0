"""``pruning.json`` as the report reads it: which experts a pruned checkpoint kept, and why.

``bench prune`` writes the file beside the pruned weights (see ``bench.engine.compute.prune``);
``bench run`` copies it into the run directory (``bench.run.checkpoint_facts``), where the report
reads it. The report runs without torch or the engine, so this reader is the harness's own:
lenient about what it does not draw (extra keys, records from before usage was stored) and strict
about what it does, so a broken file becomes one line in the report instead of a wrong picture.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class PruningRecord(BaseModel):
    """The parts of ``pruning.json`` the report shows."""

    model_config = ConfigDict(extra="ignore")
    version: int = 1
    base_model: str | None = None
    criterion: str = "reap"
    selection: str = "per-layer"
    n_experts_before: int
    n_experts_after: int
    layers: list[PrunedLayer] = Field(min_length=1)


def read_pruning(path: Path) -> PruningRecord:
    """Parse and check one ``pruning.json``; any problem is a UserError naming the file and field."""
    return read_model_file(path, PruningRecord, "pruning record")


def pruning_beside(checkpoint: str | Path | None) -> Path | None:
    """The ``pruning.json`` beside a checkpoint's weights, when the folder is here and has one."""
    if not checkpoint:
        return None
    path = Path(checkpoint).expanduser() / PRUNING_FILE
    try:
        return path if path.is_file() else None
    except OSError:  # an unreadable folder: nothing to show, and nothing to fail on
        return None
