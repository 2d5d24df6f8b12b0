"""Where a pruned checkpoint comes from: its source's identity and every earlier prune.

``pruning.json`` names the checkpoint it was cut from by cheap hashes (``config.json``, the weight
index, and each shard's safetensors header: no weight byte is read, so a 600 GB source costs
milliseconds) and, when that source was itself pruned, carries the source's record, its own chain
included, as the earlier links. Pruning a pruned checkpoint is refused unless asked for: a second
calibration on top of the first can lose most of what the first one chose to keep.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from bench.engine.planning.checkpoint import INDEX_NAME, Checkpoint
from bench.engine.planning.fp8_source import block_fp8
from bench.errors import UserError
from bench.pruning_record import PRUNING_FILE, CheckpointIdentity, PruningRecord, read_pruning

STACKING_WARNING = (
    "stacking prunes can lose most of the upstream calibration's gains (the second scoring sees only the "
    "experts the first kept, judged on another calibration)"
)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def headers_sha256(checkpoint: Checkpoint) -> str:
    """One digest over every weight file's name and raw safetensors header (length and JSON), in name order."""
    digest = hashlib.sha256()
    for file in sorted({info.file for info in checkpoint.tensors.values()}, key=lambda f: f.name):
        try:
            with file.open("rb") as fh:
                raw_len = fh.read(8)
                (length,) = struct.unpack("<Q", raw_len)
                header = fh.read(length)
        except (OSError, struct.error) as exc:
            raise UserError(f"cannot read the safetensors header of {file}: {exc}") from exc
        digest.update(file.name.encode() + b"\0" + raw_len + header)
    return digest.hexdigest()


def checkpoint_identity(checkpoint: Checkpoint) -> CheckpointIdentity:
    """The source checkpoint's identity: path and hashes of its config, index and headers."""
    index = checkpoint.path / INDEX_NAME
    fp8 = block_fp8(checkpoint)
    return CheckpointIdentity(
        path=str(checkpoint.path.resolve()),
        config_sha256=_file_digest(checkpoint.path / "config.json"),
        index_sha256=_file_digest(index) if index.is_file() else None,
        headers_sha256=headers_sha256(checkpoint),
        quantization=fp8.describe() if fp8 else None,
    )


def upstream_pruning(model_dir: Path) -> PruningRecord | None:
    """The source's own ``pruning.json`` (it was pruned before), or None; a broken one names its field."""
    path = Path(model_dir) / PRUNING_FILE
    return read_pruning(path) if path.is_file() else None


def _counts(upstream: PruningRecord) -> str:
    steps = upstream.lineage()
    return " -> ".join([str(steps[0].n_experts_before), *(str(step.n_experts_after) for step in steps)])


def stacking_refusal(model_dir: Path, upstream: PruningRecord) -> str:
    """The one line that stops a prune of an already pruned checkpoint."""
    first = upstream.lineage()[0]
    origin = first.source.path if first.source and first.source.path else first.base_model
    instead = f"prune the original {origin} once to the final count" if origin else "prune the original base once"
    return (
        f"{model_dir} is already pruned ({_counts(upstream)} experts per layer, see its {PRUNING_FILE}): "
        f"{STACKING_WARNING}; {instead}, or pass --allow-stacked (allow_stacked: true under prune: in a plan) "
        "to prune it again anyway"
    )


def stacking_warning(model_dir: Path, upstream: PruningRecord) -> str:
    """What an allowed stacked prune prints before it starts."""
    return (
        f"warning: {model_dir} is already pruned ({_counts(upstream)} experts per layer): {STACKING_WARNING}; "
        f"the new {PRUNING_FILE} records the whole chain"
    )


def refuse_stacked(model_dir: Path) -> PruningRecord | None:
    """Stop here when ``model_dir`` was pruned before; return its record otherwise (None)."""
    upstream = upstream_pruning(model_dir)
    if upstream is not None:
        raise UserError(stacking_refusal(model_dir, upstream))
    return None


def chain_after(upstream: PruningRecord | None) -> list[dict[str, Any]]:
    """The ``chain`` a new record carries: the upstream's lineage, oldest first, as JSON data."""
    if upstream is None:
        return []
    return [step.model_dump(mode="json", exclude_none=True) for step in upstream.lineage()]


def lineage_record(checkpoint: Checkpoint, upstream: PruningRecord | None) -> dict[str, Any]:
    """The ``source`` and ``chain`` keys of a new ``pruning.json``."""
    return {
        "source": checkpoint_identity(checkpoint).model_dump(mode="json", exclude_none=True),
        "chain": chain_after(upstream),
    }
