"""Will vLLM load these experts at these parallel sizes? Checked from headers, before any launch.

A server that refuses its weights does so after minutes of loading; these rules are vLLM's own
(``FusedMoEParallelConfig.make`` and the FP8 MoE methods' ``create_weights``), checked in
milliseconds from ``config.json``, the safetensors headers and the ``--vllm-arg`` flags:

* Without expert parallel, every routed expert's intermediate dimension is split over all
  tensor x data parallel ranks (vLLM flattens tensor parallel across data parallel for MoE
  layers): ``moe_intermediate_size % ranks == 0`` (an assert in ``FusedMoE``).
* With block-FP8 experts, each rank's share must be whole blocks: ``share % block_n == 0``
  ("The output_size of gate's and up's weight = ... is not divisible by weight quantization
  block_n") and, when tensor parallel is above 1, ``share % block_k == 0`` (the down projection's
  input). Expert parallel keeps experts whole, so the share is the full intermediate size.
* With expert parallel (``--enable-expert-parallel`` and tensor x data parallel above 1), whole
  experts are spread over ``ep = tp x dp`` ranks. vLLM itself hands a remainder to some ranks,
  which then hold one expert more and set every step's pace; a pruned candidate can choose its
  count, so bench asks for ``experts % ep == 0``.

Torch-free: ``bench run`` checks a checkpoint with it, and the candidate loop a planned one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.fp8_source import quantization_of
from bench.engine.planning.moe import MoEModel, is_moe_config, resolve
from bench.errors import UserError

# vLLM's spellings (argparse: long or short, "=VALUE" or the next argument; underscores allowed).
_TENSOR = ("--tensor-parallel-size", "-tp")
_DATA = ("--data-parallel-size", "-dp")
_EXPERT_ON = ("--enable-expert-parallel", "-ep")
_EXPERT_OFF = ("--no-enable-expert-parallel",)


@dataclass(frozen=True)
class ParallelSizes:
    """The parallel layout a server is launched with."""

    tensor: int = 1
    data: int = 1
    expert_parallel: bool = False

    @property
    def uses_expert_parallel(self) -> bool:
        return self.expert_parallel and self.tensor * self.data > 1

    @property
    def moe_shards(self) -> int:
        """Ranks each expert's intermediate dimension is split over (1 under expert parallel)."""
        return 1 if self.uses_expert_parallel else self.tensor * self.data

    @property
    def expert_ranks(self) -> int:
        """Ranks whole experts are spread over (1 without expert parallel)."""
        return self.tensor * self.data if self.uses_expert_parallel else 1

    def describe(self) -> str:
        parts = [f"tensor parallel {self.tensor}"] + ([f"data parallel {self.data}"] if self.data > 1 else [])
        return " x ".join(parts) + (" with expert parallel" if self.uses_expert_parallel else "")


def _option(token: str) -> tuple[str, str | None]:
    """``--tensor_parallel_size=2`` -> (``--tensor-parallel-size``, ``2``)."""
    name, sep, value = token.partition("=")
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-")
    return name, value if sep else None


def parse_parallel_sizes(args: list[str]) -> ParallelSizes:
    """The sizes the vLLM arguments ask for (later flags win, as in argparse)."""
    sizes = {"tensor": 1, "data": 1}
    expert = False
    index = 0
    while index < len(args):
        name, value = _option(args[index])
        target = "tensor" if name in _TENSOR else "data" if name in _DATA else None
        if target is not None:
            if value is None:
                index += 1
                value = args[index] if index < len(args) else None
            if value is None or not value.strip().isdigit() or int(value) < 1:
                raise UserError(f"vLLM argument {name} {value!r} must be a positive integer")
            sizes[target] = int(value)
        elif name in _EXPERT_ON:
            expert = True
        elif name in _EXPERT_OFF:
            expert = False
        index += 1
    return ParallelSizes(sizes["tensor"], sizes["data"], expert)


@dataclass(frozen=True)
class ExpertLayout:
    """What the rules need to know of a checkpoint's routed experts (from headers)."""

    n_experts: int
    intermediate: int  # rows of one expert's gate (and up) projection
    block: tuple[int, int] | None  # FP8 weight block of the routed experts; None unless block FP8
    gate_weight: str  # one routed expert's gate projection, named in the messages
    down_weight: str
    router: str


def expert_layout(checkpoint: Checkpoint, moe: MoEModel) -> ExpertLayout:
    """The routed experts of ``checkpoint`` (the first sparse layer speaks for all)."""
    layer = moe.layers[0]
    stems = moe.family.projections
    if layer.layout == "per_expert":
        gate = f"{layer.block}experts.0.{stems.gate}.weight"
        down = f"{layer.block}experts.0.{stems.down}.weight"
        intermediate = checkpoint.tensors[gate].shape[0]
    else:
        gate, down = f"{layer.block}experts.gate_up_proj", f"{layer.block}experts.down_proj"
        intermediate = checkpoint.tensors[gate].shape[1] // 2
    stored_fp8 = checkpoint.tensors[gate].dtype == "F8_E4M3"
    block = _weight_block(checkpoint.config) if stored_fp8 else None
    return ExpertLayout(moe.n_experts, intermediate, block, gate, down, layer.router)


def candidate_layout(base: ExpertLayout, moe: MoEModel, *, keep: int, block: tuple[int, int] | None,
                     unfused: bool) -> ExpertLayout:
    """The experts a pruned (and perhaps quantized) candidate of ``base`` will have, before it exists.

    Args:
        base: the base checkpoint's experts.
        moe: the base resolved (names the per-expert tensors fused experts are unfused into).
        keep: experts kept per layer.
        block: the FP8 block the candidate's experts are quantized in, if any; a block-FP8 base keeps its own.
        unfused: the candidate was quantized, which writes fused experts one tensor per expert.
    """
    gate, down = base.gate_weight, base.down_weight
    if unfused and moe.layout == "fused":
        layer, stems = moe.layers[0], moe.family.projections
        gate, down = f"{layer.block}experts.0.{stems.gate}.weight", f"{layer.block}experts.0.{stems.down}.weight"
    return replace(base, n_experts=keep, block=base.block or block, gate_weight=gate, down_weight=down)


def _weight_block(config: dict[str, Any]) -> tuple[int, int] | None:
    """The weight block of a block-FP8 config: ``fp8``'s weight_block_size or compressed-tensors' block strategy."""
    quant = quantization_of(config) or {}
    if quant.get("quant_method") == "fp8":
        block = quant.get("weight_block_size")
        return (int(block[0]), int(block[1])) if isinstance(block, list) and len(block) == 2 else None
    for group in (quant.get("config_groups") or {}).values():
        weights = group.get("weights") if isinstance(group, dict) else None
        if isinstance(weights, dict) and weights.get("strategy") == "block":
            structure = weights.get("block_structure")
            if isinstance(structure, list) and len(structure) == 2:
                return int(structure[0]), int(structure[1])
    return None


def _whole_block_sizes(layout: ExpertLayout, block_n: int, block_k: int) -> list[int]:
    """Tensor-parallel sizes (up to 16) whose shares are whole blocks."""
    fits = []
    for ranks in range(1, 17):
        share, rest = divmod(layout.intermediate, ranks)
        if not rest and not share % block_n and (ranks == 1 or not share % block_k):
            fits.append(ranks)
    return fits


def load_problem(layout: ExpertLayout, sizes: ParallelSizes) -> str | None:
    """The one line that says why vLLM would not load these experts at these sizes, or None."""
    shards = sizes.moe_shards
    rows = layout.intermediate
    if rows % shards:
        return (
            f"{layout.gate_weight}: its {rows} rows do not split evenly over the {shards} ranks of "
            f"{sizes.describe()} (vLLM asserts moe intermediate_size % tp_size == 0); pick sizes that divide {rows}, "
            "or add --enable-expert-parallel"
        )
    share = rows // shards
    if layout.block is not None:
        block_n, block_k = layout.block
        if rows % block_n:
            return (
                f"{layout.gate_weight}: its {rows} rows are not whole {block_n}x{block_k} FP8 blocks at any parallel "
                f"size (vLLM stops with \"The output_size of gate's and up's weight = {share} is not divisible by "
                f"weight quantization block_n = {block_n}\"); quantize it with per-channel scales (no --block) instead"
            )
        whole = ", ".join(str(n) for n in _whole_block_sizes(layout, block_n, block_k)) or "none"
        fix = f"tensor x data parallel sizes that keep whole blocks: {whole}; or add --enable-expert-parallel"
        if share % block_n:
            return (
                f"{layout.gate_weight}: {sizes.describe()} leaves each rank {share} of its {rows} rows, not whole "
                f"{block_n}x{block_k} FP8 blocks (vLLM stops with \"The output_size of gate's and up's weight = "
                f"{share} is not divisible by weight quantization block_n = {block_n}\"); {fix}"
            )
        if sizes.tensor > 1 and share % block_k:
            return (
                f"{layout.down_weight}: {sizes.describe()} leaves each rank {share} of its {rows} input columns, not "
                f"whole {block_n}x{block_k} FP8 blocks (vLLM stops with \"The input_size of down's weight = {share} "
                f"is not divisible by weight quantization block_k = {block_k}\"); {fix}"
            )
    ranks = sizes.expert_ranks
    if layout.n_experts % ranks:
        return (
            f"{layout.router}: {layout.n_experts} experts per layer do not divide over expert parallel size {ranks} "
            f"({sizes.describe()}): some ranks would hold one expert more and set every step's pace; keep a multiple "
            f"of {ranks} experts, or change the parallel sizes"
        )
    return None


def checkpoint_layout(model_dir: Path) -> ExpertLayout | None:
    """The routed experts of a checkpoint directory, or None where there is nothing to check.

    Dense models, non-safetensors weights and families the engine does not know are left to vLLM:
    this check only speaks when it can name the tensor.
    """
    try:
        checkpoint = Checkpoint.open(model_dir)
        if not is_moe_config(checkpoint.config):
            return None
        return expert_layout(checkpoint, resolve(checkpoint))
    except (UserError, KeyError):
        return None


def check_load(model_dir: Path, args: list[str]) -> None:
    """Stop before launch, in one line, when vLLM would refuse these experts at the asked sizes."""
    sizes = parse_parallel_sizes(args)
    layout = checkpoint_layout(model_dir)
    problem = load_problem(layout, sizes) if layout else None
    if problem:
        raise UserError(problem)
