"""Will it fit? Served memory of a checkpoint at bf16 and FP8, from config and headers only.

Served memory = weights + KV cache (+ recurrent state for linear-attention layers) + runtime
overhead, against ``gpu_gib x gpu_memory_utilization`` (vLLM's budget). Weights are exact: the
same planners that write pruned and FP8 checkpoints (``prune_plan.plan_pruned``,
``fp8_plan.plan_quantization``) are run on headers, so "keep N experts per layer" predicts the bytes
``bench prune`` and ``bench quantize`` will write. Weights scale linearly with the experts kept,
so the largest N that fits is solved directly. No torch, no weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.fp8_plan import plan_quantization
from bench.engine.planning.layout import PlannedTensor, predicted_file_bytes
from bench.engine.planning.moe import MoEModel, resolve_if_moe, text_config
from bench.engine.planning.prune_plan import plan_pruned, uniform_keep, virtual_checkpoint
from bench.engine.planning.sizes import gib
from bench.errors import UserError

GIB = 1 << 30
SHARD = 4 << 30
FLOAT = {"BF16", "F16", "F32", "F64"}


@dataclass(frozen=True)
class FitRequest:
    """The serving target."""

    model: Path
    gpu_gib: float
    context: int = 32768
    concurrency: int = 4
    utilization: float = 0.9
    overhead_gib: float = 1.5


@dataclass(frozen=True)
class Precision:
    """Weight bytes at one precision, for the full model and as a function of experts kept."""

    name: str
    full_bytes: int
    bytes_at_min_keep: int  # with ``min_keep`` experts per layer
    min_keep: int
    n_experts: int

    def at(self, keep: int) -> int:
        """Bytes with ``keep`` experts per layer (linear between the two exact plans)."""
        if self.n_experts == self.min_keep:
            return self.full_bytes
        per_expert = (self.full_bytes - self.bytes_at_min_keep) / (self.n_experts - self.min_keep)
        return round(self.bytes_at_min_keep + per_expert * (keep - self.min_keep))

    def keep_for(self, budget: int) -> int | None:
        """Most experts per layer whose weights fit ``budget`` bytes; ``None`` when even ``min_keep`` does not."""
        if self.full_bytes <= budget:
            return self.n_experts
        if self.bytes_at_min_keep > budget:
            return None
        per_expert = (self.full_bytes - self.bytes_at_min_keep) / (self.n_experts - self.min_keep)
        return self.min_keep + int((budget - self.bytes_at_min_keep) // per_expert)


@dataclass(frozen=True)
class FitReport:
    """Everything ``bench fit`` prints."""

    request: FitRequest
    family: str
    n_experts: int
    top_k: int
    moe_layers: int
    bf16: Precision
    fp8: Precision
    kv_bytes_per_token: int
    kv_bytes: int
    state_bytes: int
    budget_bytes: int

    @property
    def weights_budget(self) -> int:
        return self.budget_bytes - self.kv_bytes - self.state_bytes

    def keep(self, precision: Precision) -> int | None:
        return precision.keep_for(self.weights_budget)


def _as_bf16(checkpoint: Checkpoint) -> list[PlannedTensor]:
    """The checkpoint's tensors as served in bf16 (fp32 weights are cast down by vLLM)."""
    return [
        PlannedTensor(t.name, "BF16" if t.dtype in FLOAT else t.dtype, t.shape) for t in checkpoint.in_file_order()
    ]


def _bf16_bytes(checkpoint: Checkpoint) -> int:
    return predicted_file_bytes(_as_bf16(checkpoint), SHARD)


def _fp8_bytes(checkpoint: Checkpoint) -> int:
    return plan_quantization(checkpoint).predicted_bytes(SHARD)


def predict_pruned(checkpoint: Checkpoint, moe: MoEModel, keep: int) -> Checkpoint:
    """Headers of the checkpoint ``bench prune --keep keep`` would write."""
    config, plan = plan_pruned(checkpoint, moe, uniform_keep(moe, keep))
    return virtual_checkpoint(checkpoint.path, config, plan)


def predicted_sizes(model: Path | str, keep: int | None = None) -> dict[str, int]:
    """Predicted on-disk bytes at the source dtype, bf16 and FP8, optionally pruned to ``keep`` experts."""
    checkpoint = Checkpoint.open(model)
    if keep is not None:
        moe = resolve_if_moe(checkpoint)
        if moe is None:
            raise UserError(f"{model} is a dense model: there are no experts to keep")
        checkpoint = predict_pruned(checkpoint, moe, keep)
    as_is = predicted_file_bytes(
        [PlannedTensor(t.name, t.dtype, t.shape) for t in checkpoint.in_file_order()], SHARD
    )
    return {"source": as_is, "bf16": _bf16_bytes(checkpoint), "fp8": _fp8_bytes(checkpoint)}


def kv_cache_bytes_per_token(text: dict[str, Any], dtype_bytes: int = 2) -> tuple[int, int]:
    """(KV bytes per token over all attention layers, recurrent state bytes per sequence).

    Standard attention stores K and V per KV head; DeepSeek's MLA stores one compressed latent
    plus the rotary part per layer; linear-attention layers (Qwen3-Next/3.5 Gated DeltaNet) keep
    a fixed-size state per sequence instead of a per-token cache.
    """
    n_layers = int(text.get("num_hidden_layers", 0))
    layer_types = text.get("layer_types") or ["full_attention"] * n_layers
    attention_layers = sum(1 for t in layer_types if t != "linear_attention")
    linear_layers = n_layers - attention_layers
    if text.get("kv_lora_rank"):
        per_layer = (int(text["kv_lora_rank"]) + int(text.get("qk_rope_head_dim", 0))) * dtype_bytes
    else:
        heads = int(text.get("num_attention_heads", 1))
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // max(heads, 1))
        per_layer = 2 * kv_heads * head_dim * dtype_bytes
    state = 0
    if linear_layers:
        v_heads = int(text.get("linear_num_value_heads", 0))
        k_heads = int(text.get("linear_num_key_heads", 0))
        k_dim = int(text.get("linear_key_head_dim", 0))
        v_dim = int(text.get("linear_value_head_dim", 0))
        kernel = int(text.get("linear_conv_kernel_dim", 4))
        recurrent = v_heads * k_dim * v_dim * 4  # fp32 recurrent state
        conv = (2 * k_heads * k_dim + v_heads * v_dim) * (kernel - 1) * dtype_bytes
        state = linear_layers * (recurrent + conv)
    return attention_layers * per_layer, state


def fit(request: FitRequest) -> FitReport:
    """Predict served memory at bf16 and FP8 and the experts per layer that fit the GPU."""
    if request.gpu_gib <= 0 or request.context <= 0 or request.concurrency <= 0:
        raise UserError("--gpu-gib, --context and --concurrency must be positive")
    if not 0 < request.utilization <= 1:
        raise UserError(f"--gpu-memory-utilization must be in (0, 1], got {request.utilization}")
    checkpoint = Checkpoint.open(request.model)
    if checkpoint.config.get("quantization_config"):
        raise UserError(f"{request.model} is already quantized: run fit on the original bf16 checkpoint")
    moe = resolve_if_moe(checkpoint)
    text = text_config(checkpoint.config)
    per_token, state = kv_cache_bytes_per_token(text)
    bf16_full, fp8_full = _bf16_bytes(checkpoint), _fp8_bytes(checkpoint)
    if moe is not None:
        small = predict_pruned(checkpoint, moe, moe.top_k)
        bf16 = Precision("bf16", bf16_full, _bf16_bytes(small), moe.top_k, moe.n_experts)
        fp8 = Precision("fp8", fp8_full, _fp8_bytes(small), moe.top_k, moe.n_experts)
    else:
        bf16 = Precision("bf16", bf16_full, bf16_full, 1, 1)
        fp8 = Precision("fp8", fp8_full, fp8_full, 1, 1)
    budget = int(request.gpu_gib * GIB * request.utilization - request.overhead_gib * GIB)
    return FitReport(
        request=request,
        family=moe.family.title if moe else f"dense ({checkpoint.config.get('model_type')})",
        n_experts=moe.n_experts if moe else 0,
        top_k=moe.top_k if moe else 0,
        moe_layers=len(moe.layers) if moe else 0,
        bf16=bf16,
        fp8=fp8,
        kv_bytes_per_token=per_token,
        kv_bytes=per_token * request.context * request.concurrency,
        state_bytes=state * request.concurrency,
        budget_bytes=budget,
    )


def render_fit(report: FitReport) -> str:
    """The human-readable table ``bench fit`` prints."""
    r = report.request
    lines = [
        f"model {r.model} ({report.family}"
        + (f", {report.n_experts} experts, top-{report.top_k}, {report.moe_layers} MoE layers)" if report.n_experts
           else ")"),
        f"GPU {r.gpu_gib:g} GiB x {r.utilization:g} utilization - {r.overhead_gib:g} GiB overhead "
        f"= {gib(report.budget_bytes)} for weights and cache",
        f"KV cache {report.kv_bytes_per_token / 1024:.1f} KiB/token x {r.context} tokens x {r.concurrency} sequences "
        f"= {gib(report.kv_bytes)}" + (f" (+ {gib(report.state_bytes)} recurrent state)" if report.state_bytes else ""),
        f"weights budget {gib(report.weights_budget)}",
    ]
    for precision in (report.bf16, report.fp8):
        total = precision.full_bytes + report.kv_bytes + report.state_bytes
        verdict = "fits" if total <= report.budget_bytes else "does not fit"
        line = f"{precision.name:>5}: weights {gib(precision.full_bytes)}, served {gib(total)}: {verdict}"
        if report.n_experts and verdict == "does not fit":
            keep = report.keep(precision)
            if keep is None:
                line += f"; even {report.top_k} experts/layer ({gib(precision.bytes_at_min_keep)}) is too big"
            else:
                ratio = 1 - keep / report.n_experts
                line += (
                    f"; prune to {keep}/{report.n_experts} experts per layer (bench prune --keep {keep}, "
                    f"compression {ratio:.3f}) -> weights {gib(precision.at(keep))}"
                )
        lines.append(line)
    return "\n".join(lines)
