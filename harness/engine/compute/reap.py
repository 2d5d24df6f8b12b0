"""REAP expert scoring, one decoder layer at a time, streamed from safetensors.

REAP's saliency of expert ``j`` is the mean, over the tokens routed to it, of its gate weight
times the L2 norm of its output: ``S_j = mean_{x routed to j} g_j(x) * ||f_j(x)||``. An expert
that is rarely picked but decisive when picked scores high; one that is picked often with small
weight or small output scores low.

How it runs: calibration tokens are embedded, then for each decoder layer in turn its weights
are read from the checkpoint into the family's own transformers layer class (so attention,
rotary and routing semantics are exactly the model's), every calibration sequence is run
through it, and the routed experts' outputs are computed in fixed-size token chunks inside the
MoE block while the statistics accumulate. The layer's kept experts are then chosen and, by
default, the *pruned* layer is run to produce the hidden states for the next layer, so later
layers are scored on the model as it will be served. The layer is freed before the next is read.

The hidden states between layers live in a scratch file in bfloat16
(:mod:`bench.engine.compute.hidden_store`): each sequence is read, run through the layer and
written back in turn, so the device holds one layer plus one sequence and host memory stays
bounded whatever the token count. ``hidden_store="memory"`` keeps them on the device in the
compute precision instead, as before (small runs, and the reference the store is checked against).

Which gate weight multiplies an expert's output norm is ``score_gates``: the router's own
(``router``), the top-k weights renormalized to sum to 1 (``renormalized``), or the router's
softmax over all experts before any renormalization (``raw``). It changes the statistics only;
the states handed to the next layer are always what the model computes.
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
import types
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from bench.engine.compute.coverage import DomainMass
from bench.engine.compute.hidden_store import DiskHiddenStates, HiddenStates, MemoryHiddenStates
from bench.engine.compute.memory import release_freed_memory
from bench.engine.compute.tensor_reader import MAP_WINDOW_BYTES, TensorReader
from bench.engine.compute.torch_dtypes import torch_dtype
from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.moe import MoELayer, MoEModel, set_expert_count, text_config
from bench.engine.planning.prune_plan import PruneOptions, renormalization, select_experts
from bench.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


# --------------------------------------------------------------------------------------------
# Statistics


@dataclass
class LayerStats:
    """Per-expert sums over routed tokens, kept in float64."""

    n_experts: int
    reap_sum: list[float] = field(default_factory=list)  # sum of gate * ||output||
    norm_sum: list[float] = field(default_factory=list)  # sum of ||output|| (EAN)
    gate_sum: list[float] = field(default_factory=list)  # sum of gate weights
    count: list[int] = field(default_factory=list)  # routed tokens
    tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("reap_sum", "norm_sum", "gate_sum"):
            if not getattr(self, name):
                setattr(self, name, [0.0] * self.n_experts)
        if not self.count:
            self.count = [0] * self.n_experts

    def add(self, expert: int, gates: torch.Tensor, norms: torch.Tensor) -> None:
        self.reap_sum[expert] += float((gates.double() * norms.double()).sum())
        self.norm_sum[expert] += float(norms.double().sum())
        self.gate_sum[expert] += float(gates.double().sum())
        self.count[expert] += int(gates.numel())

    def scores(self, criterion: str, *, seed: int = 0, layer: int = 0) -> list[float]:
        """Higher is more worth keeping, for each criterion."""
        if criterion == "reap":
            return [s / c if c else 0.0 for s, c in zip(self.reap_sum, self.count, strict=True)]
        if criterion == "frequency":
            return [float(c) for c in self.count]
        if criterion == "mean-gate":
            return [s / c if c else 0.0 for s, c in zip(self.gate_sum, self.count, strict=True)]
        if criterion == "ean":
            return list(self.norm_sum)
        if criterion == "random":
            rng = random.Random(seed * 100_003 + layer)
            return [rng.random() for _ in range(self.n_experts)]
        raise UserError(f"unknown criterion {criterion!r}")

    def record(self, criterion: str, seed: int, layer: int) -> dict[str, list[float]]:
        """What pruning.json stores per layer (the report's heatmaps read these)."""
        return {
            "scores": [round(v, 6) for v in self.scores(criterion, seed=seed, layer=layer)],
            "reap": [round(v, 6) for v in self.scores("reap")],
            "frequency": [float(c) for c in self.count],
            "usage": [c / self.tokens if self.tokens else 0.0 for c in self.count],
            "mean_gate": [round(v, 6) for v in self.scores("mean-gate")],
        }


@dataclass
class ScoringResult:
    """Statistics of every sparse layer and, for per-layer selection, the kept experts."""

    stats: dict[int, LayerStats]
    kept: dict[int, list[int]] | None
    criterion: str
    seed: int
    seconds: float = 0.0
    tokens: int = 0
    propagate: str = "pruned"
    domain_mass: dict[int, DomainMass] = field(default_factory=dict)  # per sparse layer, when domains were given

    def scores(self, criterion: str | None = None) -> dict[int, list[float]]:
        crit = criterion or self.criterion
        return {layer: s.scores(crit, seed=self.seed, layer=layer) for layer, s in self.stats.items()}

    def stats_for(self, layer: int) -> dict[str, list[float]]:
        return self.stats[layer].record(self.criterion, self.seed, layer)


# --------------------------------------------------------------------------------------------
# Running one decoder layer


def _stack_state(
    reader: TensorReader, moe: MoEModel, layer: MoELayer | None, prefix: str, names: list[str], dtype: torch.dtype,
    kept: list[int] | None, expert_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The layer's state dict in transformers' in-memory layout (fused experts), optionally pruned.

    Routed experts are held in ``expert_dtype`` (default ``dtype``): their stored precision, when
    the forward upcasts one expert at a time (see :func:`attach_experts_forward`).
    """

    state: dict[str, torch.Tensor] = {}
    expert_names = set(layer.all_expert_tensors()) if layer else set()
    row_sliced = {layer.router, *layer.router_extras} if layer else set()
    for name in names:
        if name in expert_names and layer is not None and layer.layout == "per_expert":
            continue
        rel = _module_name(name[len(prefix) :], moe, layer)
        tensor = reader.get(name)
        fused = layer is not None and name in layer.fused_tensors
        if kept is not None and (name in row_sliced or fused):
            tensor = tensor[kept]
        state[rel] = tensor.to(expert_dtype or dtype) if fused else tensor.to(dtype)
    if layer is not None and layer.layout == "per_expert":
        stems = moe.family.projections
        ids = kept if kept is not None else list(range(moe.n_experts))
        block = _module_name(layer.block[len(prefix) :], moe, layer)
        held = expert_dtype or dtype
        state[f"{block}experts.gate_up_proj"] = _fill_experts(reader, layer.block, ids, (stems.gate, stems.up), held)
        state[f"{block}experts.down_proj"] = _fill_experts(reader, layer.block, ids, (stems.down,), held)
    return state


def _fill_experts(reader: TensorReader, block: str, ids: list[int], stems: tuple[str, ...],
                  dtype: torch.dtype) -> torch.Tensor:
    """``[experts, rows, in]`` in ``dtype``, each expert's projections stacked along the rows.

    Written straight into one preallocated tensor: stacking, then converting, would hold the
    layer's experts up to three times over.
    """
    import torch

    first = [reader.get(f"{block}experts.{ids[0]}.{stem}.weight") for stem in stems]
    rows, width = sum(t.shape[0] for t in first), first[0].shape[1]
    out = torch.empty((len(ids), rows, width), dtype=dtype)
    del first
    for slot, expert in enumerate(ids):
        start = 0
        for stem in stems:
            part = reader.get(f"{block}experts.{expert}.{stem}.weight")
            out[slot, start : start + part.shape[0]].copy_(part)
            start += part.shape[0]
    return out


def _module_name(rel: str, moe: MoEModel, layer: MoELayer | None) -> str:
    # transformers names every family's sparse block "mlp" (Mixtral's on-disk name is block_sparse_moe).
    if layer is not None:
        block = layer.block[len(layer.prefix) :]
        if block != "mlp." and rel.startswith(block):
            return "mlp." + rel[len(block) :]
    return rel


def _hf_config(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(**copy.deepcopy(config))
    except Exception as exc:
        raise UserError(f"transformers cannot build a config for model_type {config.get('model_type')!r}: {exc}") \
            from exc


class LayerRunner:
    """Builds decoder layers of one checkpoint from safetensors and runs hidden states through them."""

    def __init__(self, checkpoint: Checkpoint, moe: MoEModel, *, device: str = "cpu", dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.checkpoint = checkpoint
        self.moe = moe
        # Windowed: the copied expert pages need not stay resident (see MAP_WINDOW_BYTES).
        self.reader = TensorReader(checkpoint, window_bytes=MAP_WINDOW_BYTES)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        config = self._config(checkpoint.config)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        layers = next(
            (m for m in skeleton.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == moe.n_layers
             and type(m[0]).__name__.endswith("DecoderLayer")),
            None,
        )
        rotary = next((m for m in skeleton.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
        if layers is None or rotary is None:
            raise UserError(f"cannot find the decoder layers of {type(skeleton).__name__} to score them one by one")
        self.layer_classes = [type(layer) for layer in layers]
        self.text_config = config.get_text_config()
        self.rotary = type(rotary)(config=self.text_config).to(self.device)
        self.embed_name = self._embed_name()

    @staticmethod
    def _config(config: dict[str, Any], **text_updates: Any) -> Any:
        raw = copy.deepcopy(config)
        text_config(raw).update(text_updates)
        hf = _hf_config(raw)
        for cfg in {id(hf): hf, id(hf.get_text_config()): hf.get_text_config()}.values():
            cfg._attn_implementation = "sdpa"  # causal without a mask: one unpadded sequence at a time
            cfg._experts_implementation = "eager"
        return hf

    def _embed_name(self) -> str:
        root = self.moe.layer_prefix.removesuffix("layers.")
        name = f"{root}embed_tokens.weight"
        if name not in self.checkpoint.tensors:
            raise UserError(f"{self.checkpoint.path}: input embeddings {name} not found")
        return name

    def embed(self, token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        import torch

        table = self.reader.get(self.embed_name)
        out = [table[torch.tensor(ids)].to(self.dtype).to(self.device) for ids in token_ids]
        del table
        self.reader.close()
        return out

    def embed_into(self, token_ids: Sequence[Sequence[int]], hidden: HiddenStates) -> None:
        """Write every sequence's input embeddings into ``hidden``, one sequence at a time."""
        import torch

        table = self.reader.get(self.embed_name)
        for i, ids in enumerate(token_ids):
            hidden.write(i, table[torch.tensor(ids)].to(self.dtype).to(self.device))
        del table
        self.reader.close()

    def build(self, index: int, kept: list[int] | None = None, renorm: dict[str, Any] | None = None, *,
              chunk_tokens: int = 4096) -> nn.Module:
        """Decoder layer ``index`` with its weights from disk; ``kept`` builds the pruned layer.

        Routed experts stay in their stored precision (bfloat16: half of float32, and they are
        nearly all of a layer) and are upcast one expert at a time as tokens reach them, which
        computes exactly what float32 weights would.
        """
        import torch

        release_freed_memory()  # what the previous layer left, before this one is read
        layer_info = self.moe.layer(index)
        prefix = f"{self.moe.layer_prefix}{index}."
        names = self.checkpoint.names_with_prefix(prefix)
        if kept is not None and layer_info is not None:
            pruned = set_expert_count(self.checkpoint.config, self.moe.family, len(kept))
            text_config(pruned).update(renorm or {})
            config = self._config(pruned).get_text_config()
        else:
            config = self.text_config
        with torch.device("meta"):
            module = self.layer_classes[index](config, index)
        lean = layer_info is not None and _experts_problem(module) is None
        expert_dtype = self._expert_dtype(layer_info) if lean else None
        state = _stack_state(self.reader, self.moe, layer_info, prefix, names, self.dtype, kept, expert_dtype)
        self.reader.close()  # see MAP_WINDOW_BYTES: only the live layer stays resident
        expected = set(module.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise UserError(
                f"layer {index}: checkpoint tensors do not match {type(module).__name__} "
                f"(missing {missing[:4]}, unexpected {extra[:4]}): the {self.moe.family.title} adapter needs updating"
            )
        module.load_state_dict(state, assign=True, strict=True)
        leftover = [n for n, b in module.named_buffers() if b.is_meta]
        if leftover:
            # Buffers that are not saved (computed in __init__): build those on a real device.
            module = self.layer_classes[index](config, index)
            module.load_state_dict(state, strict=True)
        module = module.to(self.device).eval()
        if lean:
            attach_experts_forward(_experts_module(module), None, chunk_tokens)
        return module

    def _expert_dtype(self, layer: MoELayer | None) -> torch.dtype:
        """The routed experts' stored floating-point dtype, or the compute dtype if it is wider."""
        import torch

        if layer is None or not layer.all_expert_tensors():
            return self.dtype
        stored = torch_dtype(self.checkpoint.tensors[layer.all_expert_tensors()[0]].dtype)
        if not stored.is_floating_point or torch.finfo(stored).bits >= torch.finfo(self.dtype).bits:
            return self.dtype
        return stored

    def forward(self, module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """One sequence ``[tokens, hidden]`` through one decoder layer."""
        import torch

        positions = torch.arange(hidden.shape[0], device=self.device)[None]
        x = hidden[None]
        embeddings = self.rotary(x, positions)
        out = module(x, attention_mask=None, position_ids=positions, position_embeddings=embeddings, use_cache=False)
        out = out[0] if isinstance(out, tuple) else out
        return out[0]

    def close(self) -> None:
        self.reader.close()


def _experts_problem(module: nn.Module) -> str | None:
    """Why the layer's routed experts are not the gate/up/down block scoring runs, or None."""
    experts = getattr(getattr(module, "mlp", None), "experts", None)
    if experts is None or not all(hasattr(experts, a) for a in ("gate_up_proj", "down_proj", "act_fn")):
        return f"{type(module).__name__} has no gate/up/down experts block that REAP scoring understands"
    if getattr(experts, "has_bias", False) or hasattr(experts, "gate_up_proj_bias"):
        return f"{type(experts).__name__} experts have biases, which REAP scoring does not support yet"
    return None


def _experts_module(module: nn.Module) -> nn.Module:
    problem = _experts_problem(module)
    if problem is not None:
        raise UserError(problem)
    return module.get_submodule("mlp").get_submodule("experts")


def attach_experts_forward(experts: nn.Module, stats: LayerStats | None, chunk_tokens: int, *,
                           gates: str = "router", router_logits: Callable[[], torch.Tensor] | None = None,
                           domains: DomainMass | None = None) -> None:
    """Replace the experts' forward by one that upcasts each expert as it runs and may score it.

    The output is the same weighted sum the model computes, in the hidden states' precision,
    with each expert's weights upcast only while it runs. With ``stats``, REAP statistics
    accumulate too, each output norm weighed by the ``gates`` choice (``raw`` reads the router's
    logits of the same tokens from ``router_logits``). Only ``chunk_tokens`` tokens' expert outputs
    exist at any time, so a long sequence never materializes all of them. With ``domains``, the
    served top-k weights are summed per expert for the current calibration domain (coverage).
    """
    import torch

    def forward(self: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        gate_up_proj = cast("torch.Tensor", self.gate_up_proj)
        down_proj = cast("torch.Tensor", self.down_proj)
        act_fn = cast("Callable[[torch.Tensor], torch.Tensor]", self.act_fn)
        out = torch.zeros_like(hidden)
        scored = top_k_weights
        if stats is not None:
            stats.tokens += hidden.shape[0]
            scored = _score_weights(top_k_index, top_k_weights, gates, router_logits)
        if domains is not None:
            domains.add(top_k_index, top_k_weights)
        for start in range(0, hidden.shape[0], chunk_tokens):
            stop = min(start + chunk_tokens, hidden.shape[0])
            x, index, weights = hidden[start:stop], top_k_index[start:stop], top_k_weights[start:stop]
            for expert in torch.unique(index).tolist():
                token, slot = torch.where(index == expert)
                gate_up = gate_up_proj[expert].to(x.dtype)
                gate, up = torch.nn.functional.linear(x[token], gate_up).chunk(2, dim=-1)
                del gate_up
                y = torch.nn.functional.linear(act_fn(gate) * up, down_proj[expert].to(x.dtype))
                g = weights[token, slot].to(y.dtype)
                if stats is not None:
                    stats.add(expert, scored[token + start, slot].to(y.dtype), y.norm(dim=-1))
                out.index_add_(0, token + start, (y * g[:, None]).to(out.dtype))
        return out

    # Bound to a weak proxy: a method stored on its own module is a reference cycle, which would keep
    # the layer's expert weights alive until the cyclic collector happens to run.
    experts.forward = types.MethodType(forward, weakref.proxy(experts))


def _score_weights(index: torch.Tensor, weights: torch.Tensor, gates: str,
                   router_logits: Callable[[], torch.Tensor] | None) -> torch.Tensor:
    """``[tokens, top_k]`` gate weights that scoring multiplies the output norms by."""
    import torch

    if gates == "router":
        return weights
    if gates == "renormalized":
        return weights / weights.sum(dim=-1, keepdim=True)
    if gates != "raw" or router_logits is None:
        raise UserError(f"score gates {gates!r} are not one of router, renormalized, raw")
    logits = router_logits()
    if logits.shape[0] != index.shape[0]:
        raise UserError(f"the router scored {logits.shape[0]} tokens but the experts got {index.shape[0]}: "
                        "raw score gates cannot be read for this family")
    return torch.softmax(logits.float(), dim=-1).gather(1, index)


SIGMOID_ROUTERS = ("deepseek_v3",)  # their raw scores are sigmoids, not a softmax over experts


def _router_logits_tap(module: nn.Module, moe: MoEModel) -> Callable[[], torch.Tensor]:
    """Keep the router's logits of each forward, for raw score gates; returns their reader."""
    if moe.family.name in SIGMOID_ROUTERS:
        raise UserError(f"{moe.family.title} routes with sigmoid scores, not a softmax: raw score gates are "
                        "not defined for it; use --score-gates router or renormalized")
    router = getattr(getattr(module, "mlp", None), "gate", None)
    if router is None:
        raise UserError(f"{type(module).__name__} has no mlp.gate router whose logits raw score gates could read")
    seen: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        seen["logits"] = logits.reshape(-1, logits.shape[-1])

    router.register_forward_hook(keep)

    def read() -> torch.Tensor:
        if "logits" not in seen:
            raise UserError(f"{type(router).__name__} ran no forward before the experts: raw score gates cannot "
                            "be read for this family")
        return seen["logits"]

    return read


def _advance(runner: LayerRunner, module: nn.Module, hidden: HiddenStates,
             before: Callable[[int], None] | None = None) -> None:
    """Replace each sequence's hidden states by the layer's output, one sequence at a time.

    ``before(i)`` runs ahead of sequence ``i`` (it tells coverage which domain the tokens are from).
    """
    for i in range(len(hidden)):
        if before:
            before(i)
        hidden.write(i, runner.forward(module, hidden.read(i)))


def _score_only(runner: LayerRunner, module: nn.Module, hidden: HiddenStates,
                before: Callable[[int], None] | None = None) -> None:
    for i in range(len(hidden)):
        if before:
            before(i)
        runner.forward(module, hidden.read(i))


def _domain_setter(mass: DomainMass | None, domains: Sequence[int] | None) -> Callable[[int], None] | None:
    if mass is None or domains is None:
        return None

    def before(i: int) -> None:
        mass.current = domains[i]

    return before


def open_hidden_states(options: PruneOptions, lengths: Sequence[int], hidden_size: int) -> HiddenStates:
    """Where the calibration hidden states live between layers (see :mod:`bench.engine.compute.hidden_store`)."""
    if options.hidden_store == "memory":
        return MemoryHiddenStates(len(lengths))
    return DiskHiddenStates(options.scratch_dir or tempfile.gettempdir(), lengths, hidden_size,
                            dtype=options.hidden_store, device=options.device, compute_dtype=options.dtype)


# --------------------------------------------------------------------------------------------
# The scoring loop


def score_experts(
    checkpoint: Checkpoint,
    moe: MoEModel,
    token_ids: Sequence[Sequence[int]],
    options: PruneOptions,
    *,
    keep: int,
    progress: Callable[[str], None] | None = None,
    domains: Sequence[int] | None = None,
) -> ScoringResult:
    """Score every expert of every sparse layer; with per-layer selection also choose the kept ones.

    ``domains`` gives each sequence's calibration domain (an index from 0); the served gate mass is
    then also summed per domain and expert, in the pass that scores (the full layer), for coverage.
    """
    import torch

    options.validate()
    if domains is not None and len(domains) != len(token_ids):
        raise ValueError(f"{len(domains)} domains for {len(token_ids)} sequences")
    n_domains = max(domains, default=-1) + 1 if domains is not None else 0
    started = time.perf_counter()
    per_layer = options.selection == "per-layer"
    propagate = options.propagate if per_layer else "unpruned"  # global selection needs all scores first
    gates = options.score_gates or "router"
    renorm = renormalization(moe, options.renormalize)
    runner = LayerRunner(checkpoint, moe, device=options.device, dtype=options.dtype)
    stats: dict[int, LayerStats] = {}
    kept: dict[int, list[int]] = {}
    masses: dict[int, DomainMass] = {}
    hidden = open_hidden_states(options, [len(ids) for ids in token_ids], moe.hidden_size)
    try:
        with torch.inference_mode():
            runner.embed_into(token_ids, hidden)
            for index in range(moe.n_layers):
                t0 = time.perf_counter()
                module = runner.build(index, chunk_tokens=options.chunk_tokens)
                layer = moe.layer(index)
                if layer is None:
                    _advance(runner, module, hidden)
                    del module
                    continue
                layer_stats = LayerStats(moe.n_experts)
                logits = _router_logits_tap(module, moe) if gates == "raw" else None
                mass = DomainMass(n_domains, moe.n_experts) if domains is not None else None
                attach_experts_forward(_experts_module(module), layer_stats, options.chunk_tokens, gates=gates,
                                       router_logits=logits, domains=mass)
                before = _domain_setter(mass, domains)
                reprune = per_layer and propagate == "pruned" and keep < moe.n_experts
                if reprune:  # the full layer's outputs are not handed on: score only
                    _score_only(runner, module, hidden, before)
                else:
                    _advance(runner, module, hidden, before)
                if mass is not None:
                    masses[index] = mass
                del module, logits
                stats[index] = layer_stats
                note = ""
                if per_layer:
                    kept[index] = select_experts({index: layer_stats.scores(options.criterion, seed=options.seed,
                                                                            layer=index)}, keep)[index]
                if reprune:
                    pruned = runner.build(index, kept[index], renorm, chunk_tokens=options.chunk_tokens)
                    _advance(runner, pruned, hidden)
                    del pruned
                    note = f", kept {kept[index]}"
                if progress:
                    progress(f"layer {index}: scored {moe.n_experts} experts on {layer_stats.tokens} tokens in "
                             f"{time.perf_counter() - t0:.1f} s{note}")
    finally:
        hidden.close()
        runner.close()
    return ScoringResult(
        stats=stats,
        kept=kept if per_layer else None,
        criterion=options.criterion,
        seed=options.seed,
        seconds=time.perf_counter() - started,
        tokens=sum(len(ids) for ids in token_ids),
        propagate=propagate,
        domain_mass=masses,
    )
