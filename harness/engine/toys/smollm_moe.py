"""A real-language MoE from a dense Llama-architecture model (SmolLM2-135M-Instruct by default).

Why: pruning quality is only measurable on a model whose experts carry real language. Random
tiny MoEs test plumbing; this one tests judgement, and vLLM serves it like any Qwen2-MoE.

How (MoEfication): each layer's MLP neurons are split into ``n_experts`` equal groups of
neurons that fire together, found by balanced k-means on their contribution profiles over
calibration tokens (|activation| x norm of the neuron's output column). Expert ``e`` is the
SwiGLU MLP restricted to its neurons. A linear router is fitted by least squares to predict, per
token, how much each expert's output helps rebuild the dense one, so top-k picks the experts that
matter for that token.
The neurons that matter most on the calibration text form an always-on shared expert (as in
Qwen2-MoE and DeepSeek-MoE), so an expert's saliency measures its own neurons only. Finally the
down projections are refitted (least squares held toward the dense weights, routing weights
included) so the routed MLP best rebuilds the dense one on the calibration tokens: a chosen
expert also stands in for the neurons routing left out. ``experts="exact"`` skips the refit: each
expert keeps its dense neurons' down projection, for measuring pruning criteria (the engine tests).
"""

from __future__ import annotations

import math
import random
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench.engine.planning.side_files import copy_side_files
from bench.errors import UserError

if TYPE_CHECKING:
    import torch

    from bench.engine.compute.reap import ScoringResult
    from bench.engine.planning.calibration import Mix

ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # router temperatures tried, in units of 1/std(logits)
# Pull of the refitted down projections toward the dense model's own, relative to the mean squared
# activation: strong enough that the fit does not chase the calibration tokens, which made builds
# chaotic (see docs/findings/smollm-moe-pruning-order.md for the alternatives measured).
REFIT_RIDGE = 0.1
# Router temperature of ``experts="exact"`` builds, in units of 1/std(logits): so cold that top-k
# weights are uniform to about 0.1%, while the logits still rank the experts for each token.
EXACT_ALPHA = 1e-3
ExpertFit = Literal["refit", "exact"]
# The exact build the engine tests rank pruning criteria on, and benchmarks/pruning_quality.py
# --experts exact rebuilds: exact experts from four importance bands, a quarter of each MLP always on.
RANKING_BUILD: dict[str, Any] = {"experts": "exact", "tiers": 4, "shared_fraction": 0.25}


def balanced_kmeans(points: torch.Tensor, k: int, *, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster ``points`` [n, d] into ``k`` clusters of exactly ``n / k`` points (cosine similarity).

    Each round assigns points in order of how strongly they prefer their best cluster, each to its
    most similar cluster that still has room, which keeps experts the same size (the config has one
    intermediate size).
    """
    import torch

    n = points.shape[0]
    if n % k:
        raise UserError(f"{n} neurons cannot be split into {k} equal experts: pick n_experts dividing {n}")
    capacity = n // k
    x = torch.nn.functional.normalize(points, dim=1)
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=generator)[:k]].clone()
    assignment = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        similarity = x @ centroids.T  # [n, k]
        preferences = torch.argsort(similarity, dim=1, descending=True).tolist()
        load = [0] * k
        chosen = [0] * n
        for point in torch.argsort(similarity.max(dim=1).values, descending=True).tolist():
            cluster = next(c for c in preferences[point] if load[c] < capacity)
            chosen[point] = cluster
            load[cluster] += 1
        new_assignment = torch.tensor(chosen)
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        members = torch.nn.functional.one_hot(assignment, k).to(x.dtype)  # [n, k]
        centroids = torch.nn.functional.normalize(members.T @ x, dim=1)
    return assignment


def _layer_experts(
    inputs: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, n_experts: int, top_k: int,
    shared: int, seed: int, tiers: int = 1, fit: ExpertFit = "refit",
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor, list[torch.Tensor], float]:
    """Shared neurons, per-expert neuron groups, router [E, H], shared and expert down projections, rebuild error.

    The routed neurons are ranked by importance and cut into ``tiers`` contiguous bands, each
    clustered into ``n_experts / tiers`` experts, so experts differ in how much they matter.
    ``fit`` says how the down projections are made (see ``build_smollm_moe``).
    """
    import torch

    act = torch.nn.functional.silu(inputs @ gate.T) * (inputs @ up.T)  # [T, I]
    profile = act.abs() * down.norm(dim=0)  # contribution of each neuron per token
    order = torch.argsort(profile.pow(2).mean(0), descending=True)
    n_own = (len(order) - shared) // n_experts * n_experts
    shared_ids = order[: len(order) - n_own]  # the most important neurons (plus any remainder)
    own = order[len(order) - n_own :]
    # Co-activation over (at most) 2048 tokens is plenty to group neurons, and keeps this fast.
    groups, per_band = [], n_experts // tiers
    for band in own.chunk(tiers):  # own is in descending importance: tier 0 holds the strongest
        assignment = balanced_kmeans(profile[:2048, band].T, per_band, seed=seed)
        groups += [band[assignment == e] for e in range(per_band)]
    outputs = torch.stack([act[:, g] @ down[:, g].T for g in groups])  # [E, T, H]
    always = act[:, shared_ids] @ down[:, shared_ids].T
    # How much including each expert shrinks the error of the remaining dense sum: neuron
    # contributions cancel, so a large output is not the same as a useful one.
    own_sum = outputs.sum(0)
    benefit = (2 * (outputs * own_sum[None]).sum(-1) - outputs.pow(2).sum(-1)).T  # [T, E]
    solution = _fit_router(inputs, benefit, top_k)  # [H, E]
    logits = inputs @ solution
    unit = 1.0 / max(float(logits.std()), 1e-6)
    dense = always + own_sum
    # The temperature whose routing, with one least-squares gain on the routed part, rebuilds best;
    # then one refit of the down projections under that routing.
    best = (math.inf, 0.0)
    for alpha in ALPHAS if fit == "refit" else (EXACT_ALPHA,):
        routed = _moe_output(outputs, logits * alpha * unit, top_k)
        gain = (routed * own_sum).sum() / routed.pow(2).sum().clamp_min(1e-12)
        error = float((always + gain * routed - dense).pow(2).sum())
        if error < best[0]:
            best = (error, alpha)
    weights = _routing_weights(logits * best[1] * unit, top_k)
    if fit == "refit":
        downs, rebuilt = _refit_downs(act, [shared_ids, *groups], weights, dense, down)
    else:  # the dense neurons as they are; x top_k undoes the uniform 1/top_k routing weight
        downs = [down[:, shared_ids].contiguous()] + [(top_k * down[:, g]).contiguous() for g in groups]
        rebuilt = always + top_k * torch.einsum("te,eth->th", weights, outputs)
    error = float((rebuilt - dense).pow(2).sum() / dense.pow(2).sum())
    router = (solution * best[1] * unit).T.contiguous()
    return shared_ids, groups, router, downs[0], downs[1:], error


def _routing_weights(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """[T, E] weights of renormalized top-k routing: softmax over the chosen logits, zero elsewhere."""
    import torch

    values, chosen = torch.topk(logits, top_k, dim=-1)
    return torch.zeros_like(logits).scatter(1, chosen, torch.softmax(values, dim=-1))


def _refit_downs(act: torch.Tensor, groups: list[torch.Tensor], weights: torch.Tensor, dense: torch.Tensor,
                 down: torch.Tensor, ridge: float = REFIT_RIDGE) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Down projections [H, n] per group (shared first) refitted so the routed MLP rebuilds the dense one.

    A chosen expert then also stands in for the neurons routing left out, the way a trained
    expert's output is useful on its own: least squares over the calibration tokens with each
    expert's activations weighted by its routing weight (the shared group always weighs 1), held
    toward the dense model's down projections by a ridge term (``ridge`` times the mean squared
    activation), so with few tokens per weight the fit moves weights only as far as the data
    supports.
    """
    import torch

    columns = [act[:, groups[0]]] + [act[:, g] * weights[:, e : e + 1] for e, g in enumerate(groups[1:])]
    design = torch.cat(columns, dim=1).double()  # [T, n_neurons]
    prior = torch.cat([down[:, g].T for g in groups]).double()  # [n_neurons, H]: the dense model's own
    gram = design.T @ design
    strength = ridge * float(gram.diagonal().mean())
    gram += strength * torch.eye(gram.shape[0], dtype=gram.dtype)
    solved = torch.linalg.solve(gram, design.T @ dense.double() + strength * prior)  # [n_neurons, H]
    rebuilt = (design @ solved).float()
    sizes = [len(g) for g in groups]
    return [block.T.float().contiguous() for block in torch.split(solved, sizes)], rebuilt


def _fit_router(inputs: torch.Tensor, importance: torch.Tensor, top_k: int, steps: int = 100) -> torch.Tensor:
    # importance: [tokens, experts], larger means the token gains more from that expert.
    """Linear router [H, E] whose top-k follows each token's most important experts, load-balanced.

    Trained MoEs route about equally many tokens to every expert (load balancing); this router
    does too, so experts differ in how much they matter when chosen rather than in how often they
    are chosen, as in real MoEs. Preferences are Sinkhorn-balanced (every expert an equal share),
    fitted by least squares, then per-expert offsets are tuned until top-k loads are equal.
    MoE routers have no bias: the offsets ride on the direction in which the normalized hidden
    state is nearly constant (LLM residual streams have one), found by least squares.
    """
    import torch

    n_tokens, n_experts = importance.shape
    # Preferences as positive weights (benefits can be negative): exp of the standardized benefit.
    preference = torch.exp((importance - importance.mean(1, keepdim=True)) / importance.std().clamp_min(1e-6))
    for _ in range(30):
        preference = preference / preference.sum(1, keepdim=True)
        preference = preference / preference.sum(0, keepdim=True) * (n_tokens / n_experts)
    target = preference.log()
    target = target - target.mean(1, keepdim=True)
    solution = torch.linalg.lstsq(inputs, target).solution
    constant = torch.linalg.lstsq(inputs, torch.ones(n_tokens, 1)).solution  # inputs @ constant ~ 1
    ones = inputs @ constant  # [T, 1]
    logits = inputs @ solution
    offsets = torch.zeros(n_experts)
    step = 0.5 * float(logits.std())
    share = 1.0 / n_experts
    for _ in range(steps):
        chosen = torch.topk(logits + ones * offsets, top_k, dim=-1).indices
        load = torch.bincount(chosen.flatten(), minlength=n_experts).float() / chosen.numel()
        offsets += step * (share - load) / share
        step *= 0.97
    return solution + constant @ offsets[None]


def _moe_output(outputs: torch.Tensor, logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Renormalized top-k routing: softmax over the top-k logits weights the chosen experts' outputs."""
    import torch

    return torch.einsum("te,eth->th", _routing_weights(logits, top_k), outputs)


def _routed_mlp(gate: torch.Tensor, up: torch.Tensor, shared_ids: torch.Tensor, shared_down: torch.Tensor,
                groups: list[torch.Tensor], downs: list[torch.Tensor], router: torch.Tensor, k: int) -> Any:
    """The converted MLP as a module, so later layers are fitted on the MoE's own hidden states."""
    import torch

    class RoutedMLP(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.reshape(-1, x.shape[-1])

            def part(ids: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
                return (torch.nn.functional.silu(h @ gate[ids].T) * (h @ up[ids].T)) @ down.T

            outputs = torch.stack([part(g, d) for g, d in zip(groups, downs)])
            out = part(shared_ids, shared_down) + _moe_output(outputs, h @ router.T, k)
            return out.reshape(x.shape)

    return RoutedMLP()


def _run_layer(model: Any, layer: Any, hidden: torch.Tensor) -> torch.Tensor:
    import torch

    positions = torch.arange(hidden.shape[0])[None]
    x = hidden[None]
    out = layer(x, attention_mask=None, position_ids=positions,
                position_embeddings=model.model.rotary_emb(x, positions), use_cache=False)
    return (out[0] if isinstance(out, tuple) else out)[0]


def build_smollm_moe(
    dense_dir: Path | str,
    out: Path | str,
    *,
    n_experts: int = 8,
    top_k: int = 2,
    shared_fraction: float = 0.5,
    tiers: int = 1,
    experts: ExpertFit = "refit",
    calibration: Mix | None = None,
    data_dir: Path | str | None = None,
    fit_tokens: int = 8192,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Turn a dense Llama-architecture checkpoint into a Qwen2-MoE-architecture MoE in ``out``.

    Args:
        dense_dir: dense checkpoint (e.g. from ``bench.engine.toys.builders.build_smollm``).
        out: output directory (bf16 safetensors, Qwen2-MoE config, the dense model's tokenizer,
            chat template and generation config).
        n_experts: experts per layer; must divide the MLP intermediate size.
        top_k: experts each token is routed to.
        shared_fraction: share of each MLP's neurons (the most important on the calibration text)
            that form the always-on shared expert; the rest is split between routed experts.
            Dense SwiGLU activations are not sparse, so some always-on neurons keep the MoE close
            to the dense model at the cost of larger experts. A smaller share leaves the routed
            experts more unequal in strength, which is what ranking pruning criteria needs.
        tiers: importance bands the routed neurons are cut into before clustering (must divide
            ``n_experts``): with one band every expert holds a similar mix of strong and weak
            neurons and they differ only in which tokens they serve; with several, some experts
            hold stronger neurons than others (on the dense model).
        experts: how the expert down projections are made. ``"refit"``: least squares over the
            calibration tokens, so the routed MLP rebuilds the dense one as closely as it can and a
            chosen expert also stands in for the neurons routing left out; then an expert's output
            size says little about its use on unseen text. ``"exact"``: each expert is its dense
            neurons as they are, behind a router so cold that the chosen experts weigh the same, so
            an expert's output is exactly what its neurons add to the dense MLP. Further from the
            dense model, but what a saliency criterion measures is real.
        calibration: text the neuron groups and routers are fitted on; the shipped
            ``smollm-moe-fit`` mix (needs ``data_dir`` or BENCH_DATA_DIR) by default.
        fit_tokens: at most this many calibration tokens are used.
        seed: seeds the clustering.
        progress: called with one line per layer.

    How these choices order pruning criteria on held-out text: docs/findings/smollm-moe-pruning-order.md.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    from bench.engine.planning.calibration import build_samples, load_mix

    started = time.perf_counter()
    dense_dir, out = Path(dense_dir), Path(out)
    # sdpa is causal without a mask: one unpadded sequence at a time.
    model = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    config = model.config
    if config.model_type != "llama":
        raise UserError(f"{dense_dir} is a {config.model_type!r} model: build_smollm_moe expects a dense Llama")
    if top_k > n_experts or config.intermediate_size % n_experts:
        raise UserError(
            f"need top_k <= n_experts and n_experts dividing intermediate_size {config.intermediate_size}; "
            f"got n_experts={n_experts}, top_k={top_k}"
        )
    if getattr(config, "head_dim", None) not in (None, config.hidden_size // config.num_attention_heads):
        raise UserError(f"{dense_dir}: head_dim {config.head_dim} is not hidden_size / heads, which Qwen2-MoE requires")
    if tiers < 1 or n_experts % tiers:
        raise UserError(f"tiers must divide n_experts {n_experts}, got {tiers}")
    if experts not in ("refit", "exact"):
        raise UserError(f"experts must be 'refit' or 'exact', got {experts!r}")
    if not 0 < shared_fraction < 1:
        raise UserError(f"shared_fraction must be in (0, 1), got {shared_fraction}")
    n_shared = round(shared_fraction * config.intermediate_size)
    mix = calibration or load_mix("smollm-moe-fit", data_dir=data_dir)
    samples = build_samples(mix, dense_dir).token_ids
    random.Random(seed).shuffle(samples)  # every dataset is represented when the token cap bites
    token_ids, total = [], 0
    for ids in samples:
        if total >= fit_tokens:
            break
        token_ids.append(ids[: fit_tokens - total])
        total += len(token_ids[-1])
    state: dict[str, torch.Tensor] = {}
    errors = []
    torch.set_grad_enabled(False)
    # Layer by layer: each MLP is fitted on the hidden states the already-converted layers produce,
    # so routing errors do not compound unseen.
    hidden = [model.model.embed_tokens(torch.tensor(ids)) for ids in token_ids]
    for index, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{index}."
        mlp = layer.mlp
        captured: list[torch.Tensor] = []
        hook = mlp.register_forward_pre_hook(lambda _m, args, out=captured: out.append(args[0].reshape(-1, args[0].shape[-1])))
        for h in hidden:
            _run_layer(model, layer, h)
        hook.remove()
        shared_ids, groups, router, shared_down, downs, error = _layer_experts(
            torch.cat(captured), mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, n_experts, top_k,
            n_shared, seed + index, tiers, experts,
        )
        errors.append(error)
        layer.mlp = _routed_mlp(mlp.gate_proj.weight, mlp.up_proj.weight, shared_ids, shared_down, groups, downs,
                                router, top_k)
        hidden = [_run_layer(model, layer, h) for h in hidden]
        moe = f"{prefix}mlp."
        state[f"{moe}gate.weight"] = router
        for expert, group in enumerate(groups):
            base = f"{moe}experts.{expert}."
            state[f"{base}gate_proj.weight"] = mlp.gate_proj.weight[group]
            state[f"{base}up_proj.weight"] = mlp.up_proj.weight[group]
            state[f"{base}down_proj.weight"] = downs[expert]
        # The shared expert is always on behind a sigmoid gate; a zero gate weight makes that 0.5
        # for every token, undone by doubling its down projection.
        state[f"{moe}shared_expert.gate_proj.weight"] = mlp.gate_proj.weight[shared_ids]
        state[f"{moe}shared_expert.up_proj.weight"] = mlp.up_proj.weight[shared_ids]
        state[f"{moe}shared_expert.down_proj.weight"] = shared_down * 2
        state[f"{moe}shared_expert_gate.weight"] = torch.zeros(1, config.hidden_size)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            weight = getattr(layer.self_attn, name).weight
            state[f"{prefix}self_attn.{name}.weight"] = weight
            if name != "o_proj":  # Qwen2-MoE attention has q/k/v biases; the dense model's are zero
                state[f"{prefix}self_attn.{name}.bias"] = torch.zeros(weight.shape[0])
        state[f"{prefix}input_layernorm.weight"] = layer.input_layernorm.weight
        state[f"{prefix}post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        if progress:
            progress(f"layer {index}: {n_experts} experts, MLP rebuild error {error:.3f}")
    state["model.embed_tokens.weight"] = model.model.embed_tokens.weight
    state["model.norm.weight"] = model.model.norm.weight
    # Untied output head: every loader (vLLM's included) reads it as a plain tensor.
    state["lm_head.weight"] = model.get_output_embeddings().weight
    moe_config = Qwen2MoeConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        moe_intermediate_size=int(state["model.layers.0.mlp.experts.0.gate_proj.weight"].shape[0]),
        shared_expert_intermediate_size=n_shared,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=getattr(config, "rope_parameters", None),
        num_experts=n_experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=True,
        qkv_bias=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        router_aux_loss_coef=0.0,
    )
    moe_config.architectures = ["Qwen2MoeForCausalLM"]
    moe_config.dtype = "bfloat16"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    moe_config.save_pretrained(out)
    copy_side_files(dense_dir, out)
    torch.set_grad_enabled(True)
    if progress:
        progress(f"built {out} in {time.perf_counter() - started:.0f} s; mean MLP rebuild error "
                 f"{sum(errors) / len(errors):.3f} on {total} tokens")
    return out


class LossMeter:
    """Held-out next-token loss of one checkpoint, with experts optionally masked out per layer.

    Masking removed experts' router logits is exactly what slicing them out does to a renormalizing
    router (top-k, then softmax over the chosen logits), so many pruning choices can be compared
    on one loaded model; ``bench prune`` output is checked against it in the tests. Scaling the
    routing weights (``routed_scale``) scales every routed expert's output: how far the loss moves
    under such a small uniform change is the yardstick a gap between two selections must clear.
    """

    def __init__(self, model_dir: Path | str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self._masks: dict[int, torch.Tensor] = {}
        self._routed_scale = 1.0
        for index, layer in enumerate(self.model.model.layers):
            router = getattr(getattr(layer, "mlp", None), "gate", None)
            if router is not None and hasattr(router, "top_k"):
                # A bound method, as loaders that wrap forward (compressed-tensors) expect.
                router.forward = types.MethodType(self._masked_forward(index), router)

    def _masked_forward(self, index: int) -> Callable[[Any, torch.Tensor], Any]:
        import torch

        def forward(router: Any, hidden: torch.Tensor) -> Any:
            hidden = hidden.reshape(-1, router.hidden_dim)
            logits = torch.nn.functional.linear(hidden, router.weight)
            mask = self._masks.get(index)
            if mask is not None:
                logits = logits.masked_fill(mask, float("-inf"))
            values, indices = torch.topk(logits.float(), router.top_k, dim=-1)
            weights = torch.softmax(values, dim=-1) * self._routed_scale
            return logits, weights.to(logits.dtype), indices

        return forward

    def token_losses(self, token_ids: list[list[int]], kept: dict[int, list[int]] | None = None,
                     routed_scale: float = 1.0) -> torch.Tensor:
        """Next-token cross-entropy (nats) of every predicted token in ``token_ids``, in order, with only
        ``kept`` experts routable and every routed expert's output times ``routed_scale``: one value
        per token, so two selections compare token by token."""
        import torch

        self._routed_scale = routed_scale
        self._masks = {}
        for index, ids in (kept or {}).items():
            n = self.model.model.layers[index].mlp.gate.weight.shape[0]
            mask = torch.ones(n, dtype=torch.bool)
            mask[list(ids)] = False
            self._masks[index] = mask
        losses = []
        with torch.inference_mode():
            for ids in token_ids:
                batch = torch.tensor([ids])
                logits = self.model(batch).logits[0, :-1]
                losses.append(torch.nn.functional.cross_entropy(logits.float(), batch[0, 1:], reduction="none"))
        return torch.cat(losses)

    def selection_losses(self, token_ids: list[list[int]], scoring: ScoringResult, criterion: str, keep: int, *,
                         seed: int = 0, invert: bool = False) -> torch.Tensor:
        """``token_losses`` with every layer keeping the ``keep`` experts ``criterion`` rates highest in
        ``scoring`` (lowest with ``invert``: the mirror image that a saliency criterion must beat)."""
        from bench.engine.planning.prune_plan import select_experts

        scores = {layer: stats.scores(criterion, seed=seed, layer=layer) for layer, stats in scoring.stats.items()}
        if invert:
            scores = {layer: [-value for value in values] for layer, values in scores.items()}
        return self.token_losses(token_ids, select_experts(scores, keep))

    def loss(self, token_ids: list[list[int]], kept: dict[int, list[int]] | None = None) -> float:
        """Mean next-token cross-entropy (nats) over ``token_ids`` with only ``kept`` experts routable."""
        return float(self.token_losses(token_ids, kept).double().mean())


def loss_gap(other: torch.Tensor, reference: torch.Tensor, lengths: list[int]) -> tuple[float, float]:
    """Mean per-token loss of ``other`` minus ``reference`` (same tokens, from ``LossMeter.token_losses``)
    and its standard error over the questions ``lengths`` splits the tokens into.

    Tokens of one question are not independent, so the error is taken over questions (a ratio
    estimator: each question's summed difference against the mean gap times its length); positive
    means ``reference`` is better.
    """
    import torch

    difference = (other - reference).double()
    per_question = torch.stack([chunk.sum() for chunk in torch.split(difference, lengths)])
    n, total = len(per_question), float(sum(lengths))
    gap = float(per_question.sum()) / total
    spread = (per_question - gap * torch.tensor(lengths, dtype=torch.float64)).pow(2).sum() * n / max(n - 1, 1)
    return gap, float(spread.sqrt()) / total
