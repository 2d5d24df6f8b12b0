"""MoE family adapters: where each family keeps its router, experts and shared expert.

One small table row per family says how its ``config.json`` counts experts, which decoder
layers are sparse, and how the experts are named on disk. ``resolve`` then reads only tensor
headers to find, for every MoE layer, the router rows and the expert tensors in either on-disk
layout:

* ``per_expert``: one 2D tensor per expert and projection (``experts.7.gate_proj.weight``);
* ``fused``: one 3D tensor per projection, experts first (``experts.gate_up_proj`` with shape
  ``[n_experts, 2 * intermediate, hidden]``), which many quantizers skip without a word.

Everything downstream (fit, FP8, pruning) asks this module instead of matching names itself,
so a new family is one table entry. An unknown family fails with one line naming what is missing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.engine.planning.checkpoint import Checkpoint
from bench.errors import UserError

Layout = Literal["per_expert", "fused"]


def _every_layer(cfg: dict[str, Any], layer: int) -> bool:
    return True


def _qwen_sparse_layers(cfg: dict[str, Any], layer: int) -> bool:
    """Qwen2/3-MoE: ``mlp_only_layers`` stay dense, and only every ``decoder_sparse_step``-th is sparse."""
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    return layer not in set(cfg.get("mlp_only_layers") or []) and (layer + 1) % step == 0


def _deepseek_sparse_layers(cfg: dict[str, Any], layer: int) -> bool:
    """DeepSeek-V2/V3: the first ``first_k_dense_replace`` layers are dense MLPs."""
    first_dense = int(cfg.get("first_k_dense_replace", 0) or 0)
    freq = int(cfg.get("moe_layer_freq", 1) or 1)
    return layer >= first_dense and layer % freq == 0


@dataclass(frozen=True)
class Projections:
    """On-disk stems of one expert's three projections (gate, up, down)."""

    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"

    def all(self) -> tuple[str, str, str]:
        return (self.gate, self.up, self.down)


@dataclass(frozen=True)
class Family:
    """How one MoE family lays out its config and tensors."""

    name: str
    title: str
    model_types: tuple[str, ...]
    expert_count_key: str
    top_k_key: str = "num_experts_per_tok"
    intermediate_key: str = "moe_intermediate_size"
    # Module names under a decoder layer that may hold the sparse block, in preference order.
    blocks: tuple[str, ...] = ("mlp",)
    projections: Projections = Projections()
    # Router tensors other than ``gate.weight`` that have one row per expert (sliced on pruning).
    router_extras: tuple[str, ...] = ()
    # Shared (always-on) expert modules under the block, and their scalar gate if any.
    shared: tuple[str, ...] = ()
    renorm_key: str | None = None
    sparse_layer: Callable[[dict[str, Any], int], bool] = _every_layer
    # Config keys that must be rewritten after pruning, as (key, value-or-None-to-delete).
    prune_overrides: tuple[tuple[str, Any], ...] = ()
    # Regexes (on tensor names) of linear weights FP8 must keep in high precision for this family.
    keep_high_precision: tuple[str, ...] = ()


FAMILIES: tuple[Family, ...] = (
    Family(
        name="qwen3_moe",
        title="Qwen3-MoE",
        model_types=("qwen3_moe",),
        expert_count_key="num_experts",
        renorm_key="norm_topk_prob",
        sparse_layer=_qwen_sparse_layers,
    ),
    Family(
        name="qwen2_moe",
        title="Qwen2-MoE / Qwen3-Next (shared expert)",
        model_types=("qwen2_moe", "qwen3_next"),
        expert_count_key="num_experts",
        shared=("shared_expert", "shared_expert_gate"),
        renorm_key="norm_topk_prob",
        sparse_layer=_qwen_sparse_layers,
        keep_high_precision=(r"\.linear_attn\.in_proj_(a|b|ba)\.", r"\.linear_attn\.conv1d\."),
    ),
    Family(
        name="qwen3_5_moe",
        title="Qwen3.5/3.6-MoE (shared expert, fused experts)",
        model_types=("qwen3_5_moe", "qwen3_5_moe_text"),
        expert_count_key="num_experts",
        shared=("shared_expert", "shared_expert_gate"),
        keep_high_precision=(
            r"\.linear_attn\.in_proj_(a|b)\.",
            r"\.linear_attn\.conv1d\.",
            r"^model\.visual\.",
            r"^mtp\.",
        ),
    ),
    Family(
        name="mixtral",
        title="Mixtral",
        model_types=("mixtral", "minimax"),
        expert_count_key="num_local_experts",
        intermediate_key="intermediate_size",
        blocks=("block_sparse_moe", "mlp"),
        projections=Projections(gate="w1", up="w3", down="w2"),
    ),
    Family(
        name="olmoe",
        title="OLMoE",
        model_types=("olmoe",),
        expert_count_key="num_experts",
        intermediate_key="intermediate_size",
        renorm_key="norm_topk_prob",
    ),
    Family(
        name="deepseek_v2",
        title="DeepSeek-V2 (shared experts)",
        model_types=("deepseek_v2",),
        expert_count_key="n_routed_experts",
        shared=("shared_experts",),
        renorm_key="norm_topk_prob",
        sparse_layer=_deepseek_sparse_layers,
        # Expert groups stop lining up once experts are removed: route over all kept experts.
        prune_overrides=(("n_group", 1), ("topk_group", 1), ("topk_method", "greedy")),
    ),
    Family(
        name="deepseek_v3",
        title="DeepSeek-V3 (shared experts, sigmoid router with bias)",
        model_types=("deepseek_v3", "kimi_k2"),
        expert_count_key="n_routed_experts",
        router_extras=("gate.e_score_correction_bias",),
        shared=("shared_experts",),
        renorm_key="norm_topk_prob",
        sparse_layer=_deepseek_sparse_layers,
        prune_overrides=(("n_group", 1), ("topk_group", 1)),
    ),
)

LAYER_PREFIXES = ("model.layers.", "model.language_model.layers.", "language_model.model.layers.", "layers.")


def family_for(config: dict[str, Any]) -> Family:
    """The family of a ``config.json``; unknown families name what is missing and what is known."""
    model_types = [config.get("model_type")]
    text = config.get("text_config")
    if isinstance(text, dict):
        model_types.append(text.get("model_type"))
    for family in FAMILIES:
        if any(mt in family.model_types for mt in model_types if mt):
            return family
    known = sorted(mt for fam in FAMILIES for mt in fam.model_types)
    shown = model_types[0] or "(none)"
    close = difflib.get_close_matches(str(shown), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(
        f"config.json model_type {shown!r} (architectures {config.get('architectures')}) is not a known MoE "
        f"family: no adapter says where its router, experts and expert count live.{hint} "
        f"Known: {', '.join(known)}; add a Family entry in harness/engine/planning/moe.py"
    )


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: nested ``text_config`` for multimodal wrappers, else the top level."""
    text = config.get("text_config")
    return text if isinstance(text, dict) and text.get("num_hidden_layers") else config


@dataclass
class MoELayer:
    """One sparse decoder layer: its router, its experts (in either layout) and shared parts."""

    index: int
    prefix: str  # "model.layers.3."
    block: str  # "model.layers.3.mlp."
    layout: Layout
    router: str  # "model.layers.3.mlp.gate.weight"
    router_extras: list[str]
    # per_expert: expert id -> tensor names of that expert; fused: the 3D tensors, experts first.
    expert_tensors: dict[int, list[str]] = field(default_factory=dict)
    fused_tensors: list[str] = field(default_factory=list)
    shared_tensors: list[str] = field(default_factory=list)

    def all_expert_tensors(self) -> list[str]:
        if self.layout == "fused":
            return list(self.fused_tensors)
        return [name for names in self.expert_tensors.values() for name in names]


@dataclass
class MoEModel:
    """A checkpoint resolved against its family: counts, sparse layers and tensor names."""

    family: Family
    config: dict[str, Any]
    text: dict[str, Any]
    n_experts: int
    top_k: int
    n_layers: int
    layer_prefix: str
    layers: list[MoELayer]
    hidden_size: int
    intermediate_size: int

    @property
    def layout(self) -> Layout:
        return self.layers[0].layout if self.layers else "per_expert"

    def layer(self, index: int) -> MoELayer | None:
        return next((layer for layer in self.layers if layer.index == index), None)

    def expert_tensor_names(self) -> set[str]:
        return {name for layer in self.layers for name in layer.all_expert_tensors()}

    def router_tensor_names(self) -> set[str]:
        names: set[str] = set()
        for layer in self.layers:
            names.add(layer.router)
            names.update(layer.router_extras)
        return names


# Newer transformers releases rename expert counts on save (Qwen3-MoE's num_experts becomes
# num_local_experts), so every family accepts the aliases after its own key.
EXPERT_COUNT_ALIASES = ("num_experts", "num_local_experts", "n_routed_experts")


def expert_count_key(text: dict[str, Any], family: Family) -> str:
    """The key this config actually counts experts under (the family's own key first)."""
    for key in (family.expert_count_key, *EXPERT_COUNT_ALIASES):
        if key in text:
            return key
    return family.expert_count_key


def _config_int(text: dict[str, Any], key: str, family: Family) -> int:
    value = text.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(
            f"config.json has no positive integer {key!r}: {family.title} counts experts there "
            f"(found {value!r}); is this really a {family.title} checkpoint?"
        )
    return value


def resolve(checkpoint: Checkpoint) -> MoEModel:
    """Find the router, experts and shared experts of every sparse layer from headers alone."""
    family = family_for(checkpoint.config)
    text = text_config(checkpoint.config)
    n_experts = _config_int(text, expert_count_key(text, family), family)
    top_k = _config_int(text, family.top_k_key, family)
    n_layers = _config_int(text, "num_hidden_layers", family)
    names = checkpoint.tensors
    prefix = next((p for p in LAYER_PREFIXES if any(n.startswith(f"{p}0.") for n in names)), None)
    if prefix is None:
        raise UserError(
            f"{checkpoint.path}: no decoder layer tensors found under any of {', '.join(LAYER_PREFIXES)} "
            f"(first tensors: {', '.join(sorted(names)[:3])})"
        )
    by_layer = _names_by_layer(names, prefix)
    layers = []
    for index in range(n_layers):
        if family.sparse_layer(text, index):
            layers.append(_resolve_layer(checkpoint, family, prefix, index, n_experts, by_layer.get(index, [])))
    if not layers:
        raise UserError(f"{checkpoint.path}: config says no layer is sparse, so there are no experts to work on")
    return MoEModel(
        family=family,
        config=checkpoint.config,
        text=text,
        n_experts=n_experts,
        top_k=top_k,
        n_layers=n_layers,
        layer_prefix=prefix,
        layers=layers,
        hidden_size=int(text.get("hidden_size", 0)),
        intermediate_size=int(text.get(family.intermediate_key, 0) or 0),
    )


_EXPERT_ID = re.compile(r"^experts\.(\d+)\.")
_LAYER_INDEX = re.compile(r"(\d+)\.")


def _names_by_layer(names: Iterable[str], prefix: str) -> dict[int, list[str]]:
    """Tensor names under ``prefix<i>.``, per layer ``i``: one pass, not one scan of every name per layer."""
    grouped: dict[int, list[str]] = {}
    for name in names:
        if name.startswith(prefix) and (match := _LAYER_INDEX.match(name, len(prefix))):
            grouped.setdefault(int(match.group(1)), []).append(name)
    return grouped


def _resolve_layer(checkpoint: Checkpoint, family: Family, prefix: str, index: int, n_experts: int,
                   layer_names: list[str]) -> MoELayer:
    names = checkpoint.tensors
    layer_prefix = f"{prefix}{index}."
    block = next((f"{layer_prefix}{b}." for b in family.blocks if f"{layer_prefix}{b}.gate.weight" in names), None)
    if block is None:
        expected = " or ".join(f"{layer_prefix}{b}.gate.weight" for b in family.blocks)
        raise UserError(f"{checkpoint.path}: layer {index} should be sparse but its router {expected} is missing")
    router = f"{block}gate.weight"
    router_rows = names[router].shape[0]
    if router_rows != n_experts:
        raise UserError(
            f"{router} has {router_rows} rows but config.json "
            f"{expert_count_key(text_config(checkpoint.config), family)}={n_experts}: "
            "the config and weights disagree"
        )
    extras = [f"{block}{extra}" for extra in family.router_extras if f"{block}{extra}" in names]
    in_block = [n for n in layer_names if n.startswith(f"{block}experts.")]
    shared_prefixes = tuple(f"{block}{s}." for s in family.shared)
    shared = [n for n in layer_names if shared_prefixes and n.startswith(shared_prefixes)]
    per_expert: dict[int, list[str]] = {}
    fused: list[str] = []
    for name in in_block:
        rel = name[len(block) :]
        match = _EXPERT_ID.match(rel)
        if match:
            per_expert.setdefault(int(match.group(1)), []).append(name)
        else:
            fused.append(name)
    if per_expert and fused:
        raise UserError(f"layer {index} mixes per-expert and fused expert tensors ({fused[0]}); cannot tell the layout")
    if per_expert:
        missing = sorted(set(range(n_experts)) - set(per_expert))
        if missing:
            raise UserError(f"layer {index}: experts {missing[:5]} have no tensors under {block}experts.<id>.")
        stems = family.projections.all()
        for expert, tensor_names in per_expert.items():
            for stem in stems:
                if f"{block}experts.{expert}.{stem}.weight" not in tensor_names:
                    raise UserError(
                        f"{checkpoint.path}: {block}experts.{expert}.{stem}.weight is missing "
                        f"({family.title} names expert projections {', '.join(stems)})"
                    )
        return MoELayer(index, layer_prefix, block, "per_expert", router, extras, expert_tensors=per_expert,
                        shared_tensors=shared)
    if fused:
        for name in fused:
            if names[name].shape[0] != n_experts:
                raise UserError(
                    f"fused expert tensor {name} has {names[name].shape[0]} experts in its first dimension, "
                    f"config says {n_experts}"
                )
        for stem in ("gate_up_proj", "down_proj"):
            if f"{block}experts.{stem}" not in fused:
                raise UserError(f"{checkpoint.path}: fused experts of layer {index} lack {block}experts.{stem}")
        return MoELayer(index, layer_prefix, block, "fused", router, extras, fused_tensors=sorted(fused),
                        shared_tensors=shared)
    raise UserError(
        f"{checkpoint.path}: layer {index} has a router but no experts: expected "
        f"{block}experts.0.{family.projections.gate}.weight (per expert) or {block}experts.gate_up_proj (fused)"
    )


def set_expert_count(config: dict[str, Any], family: Family, n_experts: int) -> dict[str, Any]:
    """A copy of ``config`` counting ``n_experts`` experts (inside ``text_config`` when nested)."""
    import copy

    out = copy.deepcopy(config)
    target = text_config(out)
    target[expert_count_key(target, family)] = n_experts
    for key, value in family.prune_overrides:
        if key in target:
            target[key] = value
    return out


def is_moe_config(config: dict[str, Any]) -> bool:
    """Whether ``config.json`` declares routed experts at all (dense models get FP8 and fit too)."""
    text = text_config(config)
    return any(isinstance(text.get(key), int) and text.get(key, 0) > 0 for key in EXPERT_COUNT_ALIASES)


def resolve_if_moe(checkpoint: Checkpoint) -> MoEModel | None:
    """``resolve`` for MoE checkpoints, ``None`` for dense ones; an unknown MoE family still fails."""
    return resolve(checkpoint) if is_moe_config(checkpoint.config) else None
