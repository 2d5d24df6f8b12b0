"""Files from the served checkpoint that a run directory keeps, so a report needs only the run.

A report may be rendered on another machine, long after the checkpoint folder moved or was
deleted; what it draws from the checkpoint (the expert heatmaps of ``pruning.json``) is copied
into the run directory when the run starts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.errors import UserError
from bench.pruning_record import PRUNING_FILE, pruning_beside


def copy_checkpoint_facts(model_dir: str | Path | None, run_dir: Path) -> list[Path]:
    """Copy the checkpoint's ``pruning.json`` (when it has one) into ``run_dir``; return the copies."""
    source = pruning_beside(model_dir)
    if source is None:
        return []
    target = run_dir / PRUNING_FILE
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise UserError(f"cannot copy {source} into the run directory {run_dir}: {exc.strerror}") from exc
    return [target]


def run_pruning(run_dir: Path) -> Path | None:
    """The ``pruning.json`` a run directory holds, when the run was served from a pruned checkpoint."""
    path = run_dir / PRUNING_FILE
    return path if path.is_file() else None
