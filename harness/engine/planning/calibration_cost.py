"""What scoring a calibration set will cost, from the checkpoint's headers and the declared counts.

No data and no weights are read, so a recipe of a thousand 16K-token sequences can be sized
before anything is downloaded. Memory is given per place, because each has its own limit:

* **scratch disk**: the hidden states between layers, one bfloat16 row per token
  (:mod:`bench.engine.compute.hidden_store`), the one figure that grows with the token count;
* **device**: the largest decoder layer (routed experts in their stored precision, the rest in the
  compute precision) plus one sequence's activations inside a layer;
* **host RAM**: on a CPU device the device figure, else the layer while it is read; plus the
  embedding table while tokens are embedded, one sequence's I/O buffer, the token ids, and the
  interpreter with torch and transformers loaded.

The activation term is an upper-end count, not a measurement: ~16 values of hidden width and four
of the expert count per token in the compute precision (residual, norms, projections, attention
output, router scores), plus one token chunk's routed-expert intermediates. Attention kernels that
materialize a full score matrix (the math SDPA path) would add heads x tokens^2 on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.engine.planning.checkpoint import DTYPE_BYTES, Checkpoint
from bench.engine.planning.moe import MoEModel
from bench.engine.planning.sizes import gib

RUNTIME_BYTES = 1 << 30  # Python with torch and transformers imported, before any tensor
TOKEN_ID_BYTES = 36  # one token id in a Python list: the int object and its slot
ACTIVATION_HIDDEN_WIDTHS = 16
ACTIVATION_EXPERT_WIDTHS = 4
STORE_BYTES = {"bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class ScoringCost:
    """Time and memory of scoring ``tokens`` calibration tokens, each memory figure for one place."""

    tokens: int
    seq_len: int
    device: str
    seconds: float
    gflops: float
    host_bytes: int
    scratch_bytes: int
    device_bytes: int
    layer_bytes: int
    activation_bytes: int
    embedding_bytes: int


def _layer_sizes(checkpoint: Checkpoint, moe: MoEModel | None, compute_bytes: int) -> tuple[dict[str, int],
                                                                                           dict[str, int]]:
    """Per decoder layer: (numel, bytes in memory while scoring)."""
    experts = moe.expert_tensor_names() if moe else set()
    numel: dict[str, int] = {}
    held: dict[str, int] = {}
    for info in checkpoint.tensors.values():
        parts = info.name.split(".")
        if "layers" not in parts:
            continue
        key = ".".join(parts[: parts.index("layers") + 2])
        numel[key] = numel.get(key, 0) + info.numel
        stored = DTYPE_BYTES.get(info.dtype, 4)
        # Routed experts stay in their stored precision (at least bfloat16: FP8 is read as bfloat16).
        per = max(min(stored, compute_bytes), 2) if info.name in experts else compute_bytes
        held[key] = held.get(key, 0) + int(info.numel * per)
    return numel, held


def estimate_scoring_cost(checkpoint: Checkpoint, moe: MoEModel | None, *, tokens: int, seq_len: int,
                          gflops: float, device: str = "cpu", compute_dtype: str = "float32",
                          store_dtype: str = "bfloat16", chunk_tokens: int = 4096) -> ScoringCost:
    """Seconds and bytes for scoring ``tokens`` tokens in sequences of at most ``seq_len``.

    Time: two passes per layer (score, then the pruned layer's outputs) of 2 FLOPs per active
    parameter per token, at ``gflops``.
    """
    text: dict[str, Any] = moe.text if moe else checkpoint.config
    hidden = int(text.get("hidden_size", 0) or 0)
    compute_bytes = 2 if compute_dtype in ("bfloat16", "float16") else 4
    numel, held = _layer_sizes(checkpoint, moe, compute_bytes)
    expert_numel = sum(checkpoint.tensors[n].numel for n in moe.expert_tensor_names()) if moe else 0
    dense_numel = sum(numel.values()) - expert_numel
    active = dense_numel + (expert_numel * moe.top_k / moe.n_experts if moe else 0)
    seconds = 2 * 2 * active * tokens / max(gflops * 1e9, 1.0)

    layer_bytes = max(held.values(), default=0)
    n_experts = moe.n_experts if moe else 0
    sequence = min(seq_len, max(tokens, 1))
    activation_bytes = sequence * (ACTIVATION_HIDDEN_WIDTHS * hidden + ACTIVATION_EXPERT_WIDTHS * n_experts) \
        * compute_bytes
    if moe is not None:
        activation_bytes += min(chunk_tokens, sequence) * moe.top_k * 3 * moe.intermediate_size * compute_bytes
    embedding = next((info for name, info in checkpoint.tensors.items() if name.endswith("embed_tokens.weight")), None)
    embedding_bytes = embedding.nbytes if embedding else 0
    device_bytes = layer_bytes + activation_bytes
    io_buffer = sequence * hidden * STORE_BYTES[store_dtype]
    ids = tokens * TOKEN_ID_BYTES
    on_cpu = device.split(":")[0] == "cpu"
    scoring = device_bytes if on_cpu else layer_bytes
    embedding_phase = embedding_bytes + sequence * hidden * (compute_bytes + STORE_BYTES[store_dtype])
    host_bytes = RUNTIME_BYTES + ids + io_buffer + max(scoring, embedding_phase)
    return ScoringCost(
        tokens=tokens, seq_len=seq_len, device=device, seconds=seconds, gflops=gflops, host_bytes=int(host_bytes),
        scratch_bytes=tokens * hidden * STORE_BYTES[store_dtype], device_bytes=int(device_bytes),
        layer_bytes=int(layer_bytes), activation_bytes=int(activation_bytes), embedding_bytes=int(embedding_bytes),
    )


def duration(seconds: float) -> str:
    """Seconds as people read them: s, min, h or days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render_cost(cost: ScoringCost, scratch_dir: Path | None = None, scratch_free: int | None = None) -> list[str]:
    """Lines for the preflight: time, then memory per place."""
    where = f" in {scratch_dir}" if scratch_dir else ""
    free = f", {gib(scratch_free)} free there" if scratch_free is not None else ""
    on_cpu = cost.device.split(":")[0] == "cpu"
    return [
        f"  time: ~{duration(cost.seconds)} for {cost.tokens} tokens at {cost.gflops:.1f} GFLOP/s",
        f"  scratch disk: {gib(cost.scratch_bytes)}{where}{free} (hidden states between layers, bfloat16)",
        f"  host RAM: ~{gib(cost.host_bytes)} (largest layer {gib(cost.layer_bytes)}, embeddings "
        f"{gib(cost.embedding_bytes)} while embedding, one {cost.seq_len}-token sequence, token ids, runtime)",
        f"  device {cost.device}: ~{gib(cost.device_bytes)} (largest layer {gib(cost.layer_bytes)} + one "
        f"sequence's activations {gib(cost.activation_bytes)})" + (", counted in host RAM" if on_cpu else ""),
    ]
