"""Expert pruning, done: score experts, choose the kept ones, stream the smaller checkpoint.

The plan (kept ids -> output tensors) and the options come from :mod:`bench.engine.planning.prune_plan`;
scoring lives in :mod:`bench.engine.compute.reap`. ``prune_checkpoint`` ties them together and writes
``pruning.json`` beside the weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.engine.compute.coverage import (
    DEFAULT_COVERAGE_WARN,
    check_threshold,
    measure_coverage,
    render_coverage,
    sample_domains,
)
from bench.engine.compute.memory import peak_rss_bytes
from bench.engine.compute.reap import score_experts
from bench.engine.compute.stream_writer import write_streamed
from bench.engine.compute.tensor_reader import MAP_WINDOW_BYTES, TensorReader
from bench.engine.planning.calibration import Mix, build_samples
from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.fp8_source import block_fp8, compute_view
from bench.engine.planning.lineage import lineage_record, stacking_refusal, stacking_warning, upstream_pruning
from bench.engine.planning.moe import expert_count_key, resolve, text_config
from bench.engine.planning.prune_plan import (
    PrunedTensor,
    PruneOptions,
    keep_count,
    plan_pruned,
    renormalization,
    score_gates_for,
    select_experts,
)
from bench.engine.planning.side_files import copy_side_files, write_config
from bench.engine.planning.sizes import gib
from bench.errors import UserError
from bench.pruning_record import PRUNING_FILE, CoverageRecord, PruningRecord

if TYPE_CHECKING:
    import torch


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
    reader = TensorReader(checkpoint, window_bytes=MAP_WINDOW_BYTES)

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
    coverage: CoverageRecord | None = None  # per calibration domain, the gate mass the prune removes

    def summary(self) -> str:
        return (
            f"kept {self.n_experts_after}/{self.n_experts_before} experts per layer "
            f"({self.record.get('criterion')}, {self.record.get('selection')}); "
            f"size {gib(self.before_bytes)} -> {gib(self.after_bytes)}; {self.seconds:.1f} s; "
            f"peak RSS {gib(self.peak_rss_bytes)}; wrote {self.out_dir}"
        )



def prune_checkpoint(
    model_dir: Path | str,
    out_dir: Path | str,
    mix: Mix,
    options: PruneOptions,
    *,
    allow_stacked: bool = False,
    progress: Callable[[str], None] | None = None,
    coverage_warn: float = DEFAULT_COVERAGE_WARN,
) -> PruneResult:
    """Score experts on the calibration mix, keep the best per layer, write the pruned checkpoint.

    A block-FP8 source (DeepSeek-V3, Kimi-K2, Qwen3 FP8) is scored on its dequantized weights and
    written with the kept experts' FP8 weights and scales exactly as stored.

    Args:
        model_dir: MoE safetensors checkpoint (bf16, or block FP8).
        out_dir: output directory (weights, config, tokenizer, chat template, ``pruning.json``).
        mix: calibration mix (see :func:`bench.engine.planning.calibration.load_mix`).
        options: criterion, ratio, selection and streaming options.
        allow_stacked: prune a checkpoint that was pruned before (refused otherwise; see
            :mod:`bench.engine.planning.lineage`).
        progress: called with one line per layer (and the stacking warning), then the coverage table
            and its dead-category warnings, once the kept experts are chosen and before writing.
        coverage_warn: flag a calibration dataset losing more than this share of its router gate
            mass to dropped experts (see :mod:`bench.engine.compute.coverage`).
    """
    options.validate()
    check_threshold(coverage_warn)
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise UserError("--out must differ from --model: pruning writes a new checkpoint")
    checkpoint = Checkpoint.open(model_dir)
    fp8 = block_fp8(checkpoint)  # refuses every other kind of quantized source
    upstream = upstream_pruning(model_dir)
    if upstream is not None and not allow_stacked:
        raise UserError(stacking_refusal(model_dir, upstream))
    if upstream is not None and progress:
        progress(stacking_warning(model_dir, upstream))
    lineage = lineage_record(checkpoint, upstream)
    moe = resolve(checkpoint)
    keep = keep_count(moe.n_experts, moe.top_k, compression=options.compression, keep=options.keep)
    renorm_config = renormalization(moe, options.renormalize)
    samples = build_samples(mix, model_dir)
    options = replace(options, score_gates=score_gates_for(options, mix.score_gates))  # the mix's, unless given
    # Scoring reads real values; the writer below copies the stored tensors (FP8 codes and scales) as they are.
    scored = compute_view(checkpoint, fp8) if fp8 else checkpoint
    domains = sample_domains(samples.per_dataset, len(samples.token_ids))
    if domains is None and progress:
        progress("note: coverage not measured: two calibration datasets share a label; give each a distinct name")
    scoring = score_experts(scored, resolve(scored) if fp8 else moe, samples.token_ids, options, keep=keep,
                            progress=progress, domains=domains)
    kept = scoring.kept
    if kept is None:  # scores only (global selection): choose now
        kept = select_experts(scoring.scores(options.criterion), keep, selection=options.selection, top_k=moe.top_k)
    coverage = (measure_coverage(scoring.domain_mass, kept, samples.per_dataset, coverage_warn)
                if domains is not None and scoring.domain_mass else None)
    if coverage is not None and progress:  # before the checkpoint is written: a dead category shows early
        for line in render_coverage(coverage):
            progress(line)
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
        "score_gates": options.score_gates,
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
        **({"coverage": coverage.model_dump()} if coverage is not None else {}),
        **lineage,
    }
    PruningRecord.model_validate(record)  # what the report and a later stacked prune will read back
    (out_dir / PRUNING_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return PruneResult(
        out_dir=out_dir,
        n_experts_before=moe.n_experts,
        n_experts_after=keep,
        before_bytes=checkpoint.file_bytes(),
        after_bytes=Checkpoint.open(out_dir).file_bytes(),
        seconds=time.perf_counter() - started,
        peak_rss_bytes=peak_rss_bytes(),
        record=record,
        coverage=coverage,
    )
