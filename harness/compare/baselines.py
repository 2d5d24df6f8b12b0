"""Stored baselines: a run's results, manifest and item scores kept under ``baselines/NAME/``.

A baseline is a run directory minus what a comparison never reads (server logs, caches), so the
gate and the report open it exactly like a run. items.jsonl is kept because pairing candidate
and baseline item by item needs every item's score.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bench.compare.rundata import load_run
from bench.divergence.reference import DIVERGENCE_DIR, REFERENCE_JSON
from bench.errors import UserError
from bench.pruning_record import PRUNING_FILE
from bench.run.store import ITEMS, MANIFEST, RESULTS
from bench.shipped import USER_BASELINES_DIR

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STORED_FILES = (MANIFEST, RESULTS, ITEMS)
# Kept when the run has it, so a baseline's report still draws the experts it kept.
OPTIONAL_FILES = (PRUNING_FILE,)


def save_baseline(run: Path, name: str, *, baselines_dir: Path = USER_BASELINES_DIR, overwrite: bool = False) -> Path:
    """Copy a finished run's manifest, results and items under ``baselines_dir/name``.

    The run is read (and schema-checked) first, so a broken run never becomes a baseline.
    An invalid run may be stored (it is evidence), but the gate will refuse to compare with it.
    """
    if not _NAME.match(name):
        raise UserError(f"baseline name {name!r} is not usable as a folder name: use letters, digits, '.', '_' or '-'")
    loaded = load_run(run)
    if not loaded.has_items:
        raise UserError(f"{run} has no items.jsonl: a baseline needs item scores so candidates can be paired with it")
    target = baselines_dir / name
    if target.exists() and not overwrite:
        raise UserError(f"baseline {target} already exists: pick another name or pass --overwrite")
    staging = baselines_dir / f".{name}.saving"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for filename in STORED_FILES:
        shutil.copy2(run / filename, staging / filename)
    for filename in OPTIONAL_FILES:
        if (run / filename).is_file():
            shutil.copy2(run / filename, staging / filename)
    if (run / DIVERGENCE_DIR / REFERENCE_JSON).is_file():  # the base's divergence reference: never served again
        shutil.copytree(run / DIVERGENCE_DIR, staging / DIVERGENCE_DIR,
                        ignore=shutil.ignore_patterns("vllm-cache", "server.log", "*.tmp"))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def resolve_run(reference: str, *, baselines_dir: Path = USER_BASELINES_DIR) -> Path:
    """A run directory path, or the name of a stored baseline under ``baselines_dir``."""
    path = Path(reference)
    if path.is_dir():
        return path
    named = baselines_dir / reference
    if named.is_dir():
        return named
    stored = sorted(p.name for p in baselines_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if baselines_dir.is_dir() else []
    hint = f"stored: {', '.join(stored)}" if stored else ""
    raise UserError(f"{reference} is neither a run directory nor a baseline in {baselines_dir}/ ({hint.strip() or 'none stored'})")
