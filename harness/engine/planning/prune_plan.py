"""Expert pruning, planned: how many experts to keep, which ones, and what the pruned checkpoint holds.

Kept experts are renumbered ``0..keep-1`` in their original order, router rows (and per-expert
router biases) are sliced the same way, fused ``[n_experts, ...]`` tensors keep only the kept rows,
and the config counts the new number of experts. All of it is torch-free, so ``bench fit`` predicts
pruned sizes exactly with the same code that ``bench prune`` writes by
(:mod:`bench.engine.compute.prune`), and scoring (:mod:`bench.engine.compute.reap`) and writing
share one set of options and one selection rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.engine.planning.checkpoint import Checkpoint, TensorInfo
from bench.engine.planning.layout import PlannedTensor
from bench.engine.planning.moe import MoEModel, set_expert_count
from bench.errors import UserError

Criterion = Literal["reap", "frequency", "mean-gate", "ean", "random"]
CRITERIA: tuple[str, ...] = ("reap", "frequency", "mean-gate", "ean", "random")
# How scoring weighs a routed expert's output, apart from what the pruned config serves:
#   router        the weight the model itself applies (renormalized over the top-k when its router does)
#   renormalized  the top-k weights scaled to sum to 1 per token (REAP's renormalize_router_weights on)
#   raw           the router's softmax over all experts, at the chosen ones (REAP's setting off, its
#                 default until March 2026)
SCORE_GATES: tuple[str, ...] = ("router", "renormalized", "raw")
HIDDEN_STORES: tuple[str, ...] = ("bfloat16", "float32", "memory")


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


@dataclass(frozen=True)
class PruneOptions:
    """How to choose experts. Exactly one of ``compression`` and ``keep``."""

    compression: float | None = None
    keep: int | None = None
    criterion: str = "reap"
    selection: str = "per-layer"  # or "global"
    renormalize: bool | None = None  # the served config's switch; None keeps the checkpoint's own setting
    score_gates: str | None = None  # see SCORE_GATES; None: the calibration mix's, else "router"
    propagate: str = "pruned"  # hidden states handed on: "pruned" layer outputs or "unpruned"
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    chunk_tokens: int = 4096
    max_shard_bytes: int = 4 << 30
    # Hidden states between layers: a scratch file in bfloat16 (or float32), or "memory" (small runs).
    hidden_store: str = "bfloat16"
    scratch_dir: str | None = None  # where the scratch file goes; None: the system's temporary folder

    def validate(self) -> None:
        if self.criterion not in CRITERIA:
            raise UserError(f"--criterion {self.criterion!r} is not one of {', '.join(CRITERIA)}")
        if self.selection not in ("per-layer", "global"):
            raise UserError(f"--selection {self.selection!r} must be per-layer or global")
        if self.propagate not in ("pruned", "unpruned"):
            raise UserError(f"propagate must be 'pruned' or 'unpruned', got {self.propagate!r}")
        if self.chunk_tokens <= 0:
            raise UserError("chunk_tokens must be positive")
        if self.score_gates is not None and self.score_gates not in SCORE_GATES:
            raise UserError(f"--score-gates {self.score_gates!r} is not one of {', '.join(SCORE_GATES)}")
        if self.hidden_store not in HIDDEN_STORES:
            raise UserError(f"hidden_store {self.hidden_store!r} is not one of {', '.join(HIDDEN_STORES)}")


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
    normalized: list[tuple[float, int, int]] = []
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


def renormalization(moe: MoEModel, renormalize: bool | None) -> dict[str, Any]:
    """Config change for ``--renormalize/--no-renormalize``; families without the switch say so.

    This is what the pruned model serves with. How scoring weighs expert outputs is a separate
    choice (``score_gates``), open to every family.
    """
    if renormalize is None:
        return {}
    key = moe.family.renorm_key
    if key is None:
        raise UserError(
            f"{moe.family.title} has no router renormalization switch in its config (its router always "
            "renormalizes top-k weights): drop --renormalize/--no-renormalize; to score with the gates "
            "before renormalization (REAP's renormalize_router_weights off), pass --score-gates raw"
        )
    return {key: renormalize}


def score_gates_for(options: PruneOptions, mix_score_gates: str | None) -> str:
    """The gates scoring uses: the options' choice, else the calibration mix's, else the router's own."""
    return options.score_gates or mix_score_gates or "router"
