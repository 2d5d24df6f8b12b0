"""Expert pruning: turn per-layer kept expert ids into a smaller checkpoint, streamed.

The layout of the pruned checkpoint is planned from headers: kept experts are renumbered
``0..keep-1`` in their original order, router rows (and per-expert router biases) are sliced the
same way, fused ``[n_experts, ...]`` tensors keep only the kept rows, and the config counts the
new number of experts. The plan is torch-free so ``bench fit`` can predict pruned sizes exactly;
the writer then streams each tensor from the source checkpoint.

Scoring (which experts to keep) lives in :mod:`bench.engine.reap`; ``prune_checkpoint`` ties the
two together and writes ``pruning.json`` beside the weights.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench.engine.checkpoint import (
    MAP_WINDOW_BYTES,
    Checkpoint,
    PlannedTensor,
    TensorInfo,
    copy_side_files,
    write_config,
    write_streamed,
)
from bench.engine.moe import MoEModel, expert_count_key, resolve, set_expert_count, text_config
from bench.errors import UserError
from bench.pruning_record import PRUNING_FILE

if TYPE_CHECKING:
    import torch

    from bench.engine.calibration import Mix

Criterion = Literal["reap", "frequency", "mean-gate", "ean", "random"]
CRITERIA: tuple[str, ...] = ("reap", "frequency", "mean-gate", "ean", "random")


@dataclass(frozen=True)
class PrunedTensor:
    """One output tensor: where it comes from and which expert rows of the source it keeps."""

    out: PlannedTensor
    source: str
    rows: tuple[int, ...] | None = None  # experts kept along dim 0; None copies the whole tensor


def keep_count(n_experts: int, top_k: int, *, compression: float | None, keep: int | None) -> int:
    """Experts to keep per layer from ``--compression`` (share removed) or ``--keep``."""
    if (compression is None) == (keep is None):
        raise UserError("give exactly one of --compression R (share of experts to remove) or --keep N")
    if compression is not None:
        if not 0 <= compression < 1:
            raise UserError(f"--compression must be in [0, 1), got {compression}")
        keep = round(n_experts * (1 - compression))
    assert keep is not None
    if keep > n_experts:
        raise UserError(f"--keep {keep} is more than the {n_experts} experts each layer has")
    if keep < top_k:
        raise UserError(
            f"keeping {keep} experts is fewer than the {top_k} each token is routed to (num_experts_per_tok): "
            f"keep at least {top_k}"
        )
    return keep


_EXPERT_NAME = re.compile(r"^(?P<block>.*\.)experts\.(?P<id>\d+)\.(?P<rest>.+)$")


def plan_pruned(checkpoint: Checkpoint, moe: MoEModel, kept: dict[int, list[int]]) -> tuple[dict[str, Any],
                                                                                         list[PrunedTensor]]:
    """Config and tensor plan of the pruned checkpoint; ``kept`` maps layer index to kept expert ids."""
    counts = {len(ids) for ids in kept.values()}
    if len(counts) != 1:
        raise UserError(
            f"layers would keep different numbers of experts ({sorted(counts)}), which "
            f"{moe.family.title} configs cannot express (one expert count for all layers): "
            "use per-layer selection"
        )
    (n_kept,) = counts
    missing = [layer.index for layer in moe.layers if layer.index not in kept]
    if missing:
        raise UserError(f"no kept experts given for sparse layers {missing}")
    by_block = {layer.block: layer for layer in moe.layers}
    row_sliced = {name: layer.index for layer in moe.layers for name in (layer.router, *layer.router_extras,
                                                                          *layer.fused_tensors)}
    plan: list[PrunedTensor] = []
    for info in checkpoint.in_file_order():
        match = _EXPERT_NAME.match(info.name)
        if match and match.group("block") in by_block and by_block[match.group("block")].layout == "per_expert":
            layer = by_block[match.group("block")]
            ids = kept[layer.index]
            old = int(match.group("id"))
            if old not in ids:
                continue
            new_name = f"{match.group('block')}experts.{ids.index(old)}.{match.group('rest')}"
            plan.append(PrunedTensor(PlannedTensor(new_name, info.dtype, info.shape), info.name))
        elif info.name in row_sliced:
            ids = kept[row_sliced[info.name]]
            shape = (len(ids), *info.shape[1:])
            plan.append(PrunedTensor(PlannedTensor(info.name, info.dtype, shape), info.name, tuple(ids)))
        else:
            plan.append(PrunedTensor(PlannedTensor(info.name, info.dtype, info.shape), info.name))
    return set_expert_count(checkpoint.config, moe.family, n_kept), plan


def virtual_checkpoint(path: Path, config: dict[str, Any], plan: list[PrunedTensor]) -> Checkpoint:
    """A checkpoint made of planned headers only, so later steps (FP8 plan, fit) can reason about it."""
    tensors = {
        t.out.name: TensorInfo(t.out.name, t.out.dtype, t.out.shape, path / "planned.safetensors", offset)
        for offset, t in enumerate(plan)
    }
    return Checkpoint(path, config, tensors)


def uniform_keep(moe: MoEModel, keep: int) -> dict[int, list[int]]:
    """The first ``keep`` experts of every sparse layer (for size planning, where ids do not matter)."""
    return {layer.index: list(range(keep)) for layer in moe.layers}


def write_pruned(
    checkpoint: Checkpoint,
    out_dir: Path,
    config: dict[str, Any],
    plan: list[PrunedTensor],
    *,
    max_shard_bytes: int = 4 << 30,
    chunk_bytes: int = MAP_WINDOW_BYTES,
) -> None:
    """Stream the planned tensors from the source checkpoint into ``out_dir``."""
    reader = checkpoint.reader(window_bytes=MAP_WINDOW_BYTES)

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for item in plan:
            if item.rows is None:
                for chunk in reader.row_chunks(item.source, chunk_bytes):
                    yield item.out.name, chunk
            else:
                for row in item.rows:
                    yield item.out.name, reader.rows(item.source, row, row + 1)

    write_streamed(out_dir, [t.out for t in plan], stream(), max_shard_bytes=max_shard_bytes)
    reader.close()
    write_config(out_dir, config)
    copy_side_files(checkpoint.path, out_dir)


# --------------------------------------------------------------------------------------------
# The whole step: score, select, write


@dataclass(frozen=True)
class PruneOptions:
    """How to choose experts. Exactly one of ``compression`` and ``keep``."""

    compression: float | None = None
    keep: int | None = None
    criterion: str = "reap"
    selection: str = "per-layer"  # or "global"
    renormalize: bool | None = None  # None keeps the checkpoint's own setting
    propagate: str = "pruned"  # hidden states handed on: "pruned" layer outputs or "unpruned"
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    chunk_tokens: int = 4096
    max_shard_bytes: int = 4 << 30

    def validate(self) -> None:
        if self.criterion not in CRITERIA:
            raise UserError(f"--criterion {self.criterion!r} is not one of {', '.join(CRITERIA)}")
        if self.selection not in ("per-layer", "global"):
            raise UserError(f"--selection {self.selection!r} must be per-layer or global")
        if self.propagate not in ("pruned", "unpruned"):
            raise UserError(f"propagate must be 'pruned' or 'unpruned', got {self.propagate!r}")
        if self.chunk_tokens <= 0:
            raise UserError("chunk_tokens must be positive")


@dataclass
class PruneResult:
    """What ``prune_checkpoint`` wrote."""

    out_dir: Path
    n_experts_before: int
    n_experts_after: int
    before_bytes: int
    after_bytes: int
    seconds: float
    peak_rss_bytes: int
    record: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        from bench.engine.checkpoint import gib

        return (
            f"kept {self.n_experts_after}/{self.n_experts_before} experts per layer "
            f"({self.record.get('criterion')}, {self.record.get('selection')}); "
            f"size {gib(self.before_bytes)} -> {gib(self.after_bytes)}; {self.seconds:.1f} s; "
            f"peak RSS {gib(self.peak_rss_bytes)}; wrote {self.out_dir}"
        )


def select_experts(
    scores: dict[int, list[float]], keep: int, *, selection: str = "per-layer", top_k: int = 1
) -> dict[int, list[int]]:
    """Kept expert ids per layer: the ``keep`` highest scores per layer, or a global budget.

    Global selection ranks experts across layers after dividing each layer's scores by that layer's
    mean (raw saliencies grow with depth), keeps ``keep`` x layers experts in all, and never fewer
    than ``top_k`` in a layer. It usually keeps different counts per layer.
    """
    if selection == "per-layer":
        return {layer: sorted(sorted(range(len(s)), key=lambda e: (-s[e], e))[:keep]) for layer, s in scores.items()}
    normalized = []
    for layer, layer_scores in scores.items():
        mean = sum(layer_scores) / len(layer_scores) or 1.0
        normalized.extend((value / mean, layer, expert) for expert, value in enumerate(layer_scores))
    normalized.sort(key=lambda item: (-item[0], item[1], item[2]))
    chosen: dict[int, list[int]] = {layer: [] for layer in scores}
    for layer, layer_scores in scores.items():
        for expert in sorted(range(len(layer_scores)), key=lambda e: (-layer_scores[e], e))[:top_k]:
            chosen[layer].append(expert)
    budget = keep * len(scores) - sum(len(v) for v in chosen.values())
    for _, layer, expert in normalized:
        if budget <= 0:
            break
        if expert not in chosen[layer]:
            chosen[layer].append(expert)
            budget -= 1
    return {layer: sorted(ids) for layer, ids in chosen.items()}


def prune_checkpoint(
    model_dir: Path | str,
    out_dir: Path | str,
    mix: Mix,
    options: PruneOptions,
    *,
    progress: Callable[[str], None] | None = None,
) -> PruneResult:
    """Score experts on the calibration mix, keep the best per layer, write the pruned checkpoint.

    Args:
        model_dir: MoE safetensors checkpoint.
        out_dir: output directory (weights, config, tokenizer, chat template, ``pruning.json``).
        mix: calibration mix (see :func:`bench.engine.calibration.load_mix`).
        options: criterion, ratio, selection and streaming options.
        progress: called with one line per layer.
    """
    from bench.engine import reap
    from bench.engine.calibration import build_samples

    options.validate()
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise UserError("--out must differ from --model: pruning writes a new checkpoint")
    checkpoint = Checkpoint.open(model_dir)
    if checkpoint.config.get("quantization_config"):
        raise UserError(f"{model_dir} is quantized: prune the bf16 checkpoint, then quantize the result")
    moe = resolve(checkpoint)
    keep = keep_count(moe.n_experts, moe.top_k, compression=options.compression, keep=options.keep)
    renorm_config = _renormalization(moe, options.renormalize)
    samples = build_samples(mix, model_dir)
    scoring = reap.score_experts(checkpoint, moe, samples.token_ids, options, keep=keep, progress=progress)
    kept = scoring.kept
    if kept is None:  # scores only (global selection): choose now
        kept = select_experts(scoring.scores(options.criterion), keep, selection=options.selection, top_k=moe.top_k)
    config, plan = plan_pruned(checkpoint, moe, kept)
    text = text_config(config)
    text.update(renorm_config)
    write_pruned(checkpoint, out_dir, config, plan, max_shard_bytes=options.max_shard_bytes)
    record = {
        "version": 1,
        "base_model": str(model_dir.resolve()),
        "family": moe.family.name,
        "criterion": options.criterion,
        "selection": options.selection,
        "renormalize": renorm_config or None,
        "propagate": scoring.propagate,
        "seed": options.seed,
        "n_experts_before": moe.n_experts,
        "n_experts_after": keep,
        "expert_count_key": expert_count_key(text, moe.family),
        "calibration": {
            "hash": samples.sha256,
            "recipe": mix.to_dict(),
            "samples": len(samples.token_ids),
            "tokens": samples.n_tokens,
        },
        "layers": [
            {
                "layer": layer.index,
                "kept": kept[layer.index],
                **{name: values for name, values in scoring.stats_for(layer.index).items()},
            }
            for layer in moe.layers
        ],
        "scoring_seconds": round(scoring.seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / PRUNING_FILE).write_text(json.dumps(record, indent=1) + "\n")
    from bench.engine.reap import peak_rss_bytes

    return PruneResult(
        out_dir=out_dir,
        n_experts_before=moe.n_experts,
        n_experts_after=keep,
        before_bytes=checkpoint.file_bytes(),
        after_bytes=Checkpoint.open(out_dir).file_bytes(),
        seconds=time.perf_counter() - started,
        peak_rss_bytes=peak_rss_bytes(),
        record=record,
    )


def _renormalization(moe: MoEModel, renormalize: bool | None) -> dict[str, Any]:
    """Config change for ``--renormalize/--no-renormalize``; families without the switch say so."""
    if renormalize is None:
        return {}
    key = moe.family.renorm_key
    if key is None:
        raise UserError(
            f"{moe.family.title} has no router renormalization switch in its config (its router always "
            "renormalizes top-k weights): drop --renormalize/--no-renormalize"
        )
    return {key: renormalize}
