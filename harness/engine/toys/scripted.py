"""A tiny Qwen3-MoE checkpoint whose replies are scripted by hand-set weights.

Why: parser, preflight, resume and gate tests need a real model behind a real vLLM server whose
output is known exactly in advance, at any temperature. Training cannot promise that; weights
set by hand can.

How the weights script the reply:
- Every token the model emits (and the two tokens a chat prompt can end with: the newline after
  ``<|im_start|>assistant`` and the ``\\n\\n`` after a pre-filled ``</think>``) owns one residual
  dimension, its *state*. The unembedding maps each state to its one successor with a logit
  margin of about 100, so the next token depends on the current token alone. Where the same
  token would need two successors, the builder adds a merged vocabulary entry (e.g. ``"\\nThe"``)
  and emits that instead; such entries never come out of encoding text, because the
  pre-tokenizer splits there, so prompts tokenize as usual.
- Two states branch: ``<think>`` (which reasoning to give) and ``\\n\\n`` after ``</think>``
  (which answer to give). Four attention heads, one per (branch state, trigger), look for a
  ``<tools>`` or ``<tool_response>`` token anywhere in the prompt. Every other query attends to
  the ``<|im_start|>`` tokens, whose value is zero, so only branch states ever see a trigger.
  The heads use only the slowest rotary dimensions, so position does not matter.
- The MoE blocks carry small random experts and routers: real routing work for pruning and
  quantization code, with outputs far too small to move a logit past the margin.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

Case = Literal["plain", "tools", "result"]
CASES: tuple[Case, ...] = ("plain", "tools", "result")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"
END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
# Added but not special, as in Qwen3: a server without the matching parser leaks them as text.
MARKUP_TOKENS = (
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_RESPONSE_OPEN,
    TOOL_RESPONSE_CLOSE,
    THINK_OPEN,
    THINK_CLOSE,
    TOOLS_OPEN,
    TOOLS_CLOSE,
)

TOOL_CALL_JSON = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
REASONING: dict[Case, str] = {
    "plain": "A plain question: one short sentence will do.",
    "tools": "Tools are offered, so call get_weather for Paris.",
    "result": "The tool replied; report that back.",
}
ANSWER: dict[Case, str] = {
    "plain": "Here is the scripted answer.",
    "tools": f"{TOOL_CALL_OPEN}\n{TOOL_CALL_JSON}\n{TOOL_CALL_CLOSE}",
    "result": "The weather tool has replied.",
}
# Which token in the prompt selects each case; "plain" is what is left.
TRIGGER: dict[Case, str] = {"tools": TOOLS_OPEN, "result": TOOL_RESPONSE_OPEN}

# The pre-tokenizer split used by Qwen2/Qwen3 style byte-level BPE tokenizers.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_VOCAB_TARGET = 1024
HEAD_DIM = 64  # vLLM's CPU attention supports 32, 64, 80, ...; 16 crashes at the first request
ROPE_THETA = 1_000_000.0
NUM_EXPERTS, EXPERTS_PER_TOKEN, EXPERT_SIZE = 8, 2, 128
NUM_LAYERS = 2
LOGIT_SCALE = 10.0  # times the normalised state value (>= 11) gives margins above 100
NOISE = 1e-3  # scale of the harmless random weights


def think_steps(count: int) -> list[str]:
    """The extra reasoning lines of a long thinker: one vocabulary entry each, so one token each."""
    return [f"Step {index}.\n" for index in range(1, count + 1)]


def scripted_reply(case: Case, thinking: bool = True, steps: int = 0) -> str:
    """The exact text the scripted model generates before ``<|im_end|>``.

    Args:
        case: "plain" (no tools in the prompt), "tools" (the request offers tools), or
            "result" (the prompt holds a tool result; this wins over "tools").
        thinking: False when the chat template pre-filled an empty think block.
        steps: a long thinker's extra reasoning tokens, one ``Step i.`` line each, before ``</think>``.
    """
    if not thinking:
        return ANSWER[case]
    return f"{THINK_OPEN}\n{REASONING[case]}\n{''.join(think_steps(steps))}{THINK_CLOSE}\n\n{ANSWER[case]}"


def chat_template() -> str:
    """The Qwen3-style Jinja chat template shipped with the scripted model."""
    return resources.files("bench.engine.toys").joinpath("scripted_chat_template.j2").read_text("utf-8")


def _training_corpus() -> list[str]:
    """Local text the byte-level BPE learns from: the script, the template's prose, some English."""
    english = [
        "The weather in Paris is mild today, with light rain expected in the evening.",
        "A benchmark asks the same questions of every model and scores each answer.",
        "Call the function with its arguments, then read the result it returns.",
        "What is the capital of France? The capital of France is Paris.",
        "Write a short function that adds two numbers and returns the sum.",
        "The user asked for the temperature in a city; the tool reports it in degrees.",
        "Answer briefly and think before you answer.",
        "Please summarise the document in one sentence.",
        "There are seven days in a week and twelve months in a year.",
        "The model replied with a short answer and then stopped.",
        'The arguments are a JSON object: {"city": "Paris", "unit": "celsius"}.',
        "Return the name of the function and its arguments inside the tags.",
    ]
    template_prose = [
        "system\n", "user\n", "assistant\n", "# Tools\n\n",
        "These functions are available; their signatures are listed inside",
        "To call a function, reply with a JSON object holding its name and arguments inside",
        '{"name": <function-name>, "arguments": <args-json-object>}',
        '{"type": "function", "function": {"name": "get_weather", "description": '
        '"Current weather for a city.", "parameters": {"type": "object", "properties": '
        '{"city": {"type": "string"}}, "required": ["city"]}}}',
    ]
    script = [REASONING[case] for case in CASES] + [ANSWER["plain"], ANSWER["result"]]
    script.append(TOOL_CALL_JSON)
    paragraphs = ["\n\n".join(english[i : i + 3]) for i in range(0, len(english), 3)]
    return (english + template_prose + script + paragraphs) * 3


def _train_bpe() -> Tokenizer:
    """Train the byte-level BPE (no added tokens yet) on the local corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_TARGET,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer)
    return tokenizer


@dataclass
class _Runs:
    """Token strings of every scripted reply, keyed by (case, thinking).

    ``starts`` holds the prompt's last token for each run (fixed by the template), ``emitted``
    the tokens the model must generate, ending with ``<|im_end|>``.
    """

    starts: dict[tuple[Case, bool], str]
    emitted: dict[tuple[Case, bool], list[str]]
    new_merges: list[tuple[str, str]]


def _plan_runs(bpe: Tokenizer, steps: list[str]) -> _Runs:
    """Tokenize the script and merge tokens until every state has one successor per case.

    A long thinker's ``steps`` come after every case's reasoning and before ``</think>``: the same
    tokens for every case, since what follows them (``</think>``, then the branch) is shared.
    """

    def encode(text: str) -> list[str]:
        return list(bpe.encode(text, add_special_tokens=False).tokens)

    after_assistant = encode("assistant\n")[-1]
    after_think = encode("\n\n")
    if len(after_think) != 1:
        raise RuntimeError("the toy tokenizer must hold '\\n\\n' as one token")
    blank_line = after_think[0]

    def answer_tokens(case: Case) -> list[str]:
        if case != "tools":
            return encode(ANSWER[case])
        return [TOOL_CALL_OPEN, *encode(f"\n{TOOL_CALL_JSON}\n"), TOOL_CALL_CLOSE]

    starts: dict[tuple[Case, bool], str] = {}
    emitted: dict[tuple[Case, bool], list[str]] = {}
    for case in CASES:
        starts[(case, True)] = after_assistant
        emitted[(case, True)] = [
            THINK_OPEN,
            *encode(f"\n{REASONING[case]}\n"),
            *steps,
            THINK_CLOSE,
            blank_line,
            *answer_tokens(case),
            IM_END,
        ]
        starts[(case, False)] = blank_line
        emitted[(case, False)] = [*answer_tokens(case), IM_END]

    fixed = set(SPECIAL_TOKENS) | set(MARKUP_TOKENS) | set(steps)
    branch_states = {THINK_OPEN, blank_line}
    new_merges: list[tuple[str, str]] = []
    while (merge := _find_merge(starts, emitted, branch_states, fixed)) is not None:
        new_merges.append(merge)
        for run in emitted.values():
            _apply_merge(run, merge)
    return _Runs(starts=starts, emitted=emitted, new_merges=new_merges)


def _find_merge(
    starts: dict[tuple[Case, bool], str],
    emitted: dict[tuple[Case, bool], list[str]],
    branch_states: set[str],
    fixed: set[str],
) -> tuple[str, str] | None:
    """The first pair of emitted tokens to merge so that one state stops having two successors."""
    seen: dict[tuple[str, Case | None], tuple[str, list[str], int]] = {}
    for run_key, run in emitted.items():
        sequence = [starts[run_key], *run]
        for index in range(len(sequence) - 1):
            state, successor = sequence[index], sequence[index + 1]
            key = (state, run_key[0] if state in branch_states else None)
            if key not in seen:
                seen[key] = (successor, sequence, index)
                continue
            if seen[key][0] == successor:
                continue
            _, other_sequence, other_index = seen[key]
            candidates = [
                (sequence, index, index + 1),
                (other_sequence, other_index, other_index + 1),
                (sequence, index - 1, index),
                (other_sequence, other_index - 1, other_index),
            ]
            for seq, left, right in candidates:
                # Position 0 is the prompt's last token: it cannot change.
                if left >= 1 and seq[left] not in fixed and seq[right] not in fixed:
                    return (seq[left], seq[right])
            raise RuntimeError(f"scripted state {state!r} cannot be disambiguated")
    return None


def _apply_merge(run: list[str], merge: tuple[str, str]) -> None:
    """Replace every adjacent occurrence of the pair in an emitted run by the merged token."""
    index = 0
    while index < len(run) - 1:
        if (run[index], run[index + 1]) == merge:
            run[index : index + 2] = [merge[0] + merge[1]]
        index += 1


def build_tokenizer(steps: int = 0) -> tuple[Tokenizer, _Runs]:
    """Train the BPE, add the merged script tokens, then the special, markup and step tokens."""
    from tokenizers import AddedToken, Tokenizer

    bpe = _train_bpe()
    runs = _plan_runs(bpe, think_steps(steps))
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list[str | list[str]] = spec["model"]["merges"]
    pairs_as_strings = bool(merges) and isinstance(merges[0], str)
    for left, right in runs.new_merges:
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.append(f"{left} {right}" if pairs_as_strings else [left, right])
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    tokenizer.add_tokens(
        [AddedToken(token, special=False, normalized=False) for token in MARKUP_TOKENS]
    )
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in think_steps(steps)])
    _check_script(tokenizer, runs, steps)
    return tokenizer, runs


def _check_script(tokenizer: Tokenizer, runs: _Runs, steps: int) -> None:
    """Fail the build if the planned tokens do not spell the script or prompts end elsewhere."""
    prompt_endings = {True: IM_START + "assistant\n", False: THINK_CLOSE + "\n\n"}
    for (case, thinking), run in runs.emitted.items():
        ids = [tokenizer.token_to_id(token) for token in run]
        known = [token_id for token_id in ids if token_id is not None]
        spelled = tokenizer.decode(known, skip_special_tokens=False) if len(known) == len(ids) else None
        if spelled != scripted_reply(case, thinking, steps) + IM_END:
            raise RuntimeError(f"scripted tokens for {case!r} spell {spelled!r}")
        ending = tokenizer.encode(prompt_endings[thinking], add_special_tokens=False).tokens[-1]
        if ending != runs.starts[(case, thinking)]:
            raise RuntimeError(f"chat prompts end in {ending!r}, not the scripted start state")


@dataclass(frozen=True)
class Dims:
    """Sizes of the scripted model, derived from how many states the script needs."""

    vocab_size: int
    hidden_size: int


@dataclass
class _Layout:
    """Where each feature lives in the residual stream.

    ``features`` names the fixed dimensions (the catch-all ``default``, one per key token that
    attention looks for, one per flag a head writes); ``state_dim`` maps each scripted state's
    token id to its own dimension.
    """

    features: dict[str, int]
    state_dim: dict[int, int]
    token_ids: dict[str, int]
    blank_line: str

    def token_id(self, token: str) -> int:
        return self.token_ids[token]

    def state_of(self, token: str) -> int:
        return self.state_dim[self.token_ids[token]]


# One head per (branch state, case it can switch to): 0/1 look for <tools>, 2/3 for <tool_response>.
_HEAD_PLAN: tuple[tuple[str, Case], ...] = (
    ("think", "tools"),
    ("blank", "tools"),
    ("think", "result"),
    ("blank", "result"),
)
_KV_CASES: tuple[Case, ...] = ("tools", "result")
_DIM_FLAG, _DIM_SINK = HEAD_DIM // 2 - 2, HEAD_DIM // 2 - 1  # the slowest rotary pairs


def _layout(tokenizer: Tokenizer, runs: _Runs) -> _Layout:
    token_ids: dict[str, int] = {}
    scripted = [token for run in runs.emitted.values() for token in run]
    for token in [*SPECIAL_TOKENS, *MARKUP_TOKENS, *runs.starts.values(), *scripted]:
        found = tokenizer.token_to_id(token)
        if found is None:
            raise RuntimeError(f"scripted token {token!r} is missing from the vocabulary")
        token_ids[token] = found
    features = ["default", "key:" + IM_START, *("key:" + TRIGGER[case] for case in _KV_CASES)]
    features += [f"flag:{branch}:{case}" for branch, case in _HEAD_PLAN]
    named = {name: index for index, name in enumerate(features)}
    state_dim: dict[int, int] = {}
    for run_key, run in runs.emitted.items():
        for token in [runs.starts[run_key], *run[:-1]]:
            state_dim.setdefault(token_ids[token], len(named) + len(state_dim))
    return _Layout(named, state_dim, token_ids, blank_line=runs.starts[("plain", False)])


def _branch_token(layout: _Layout, branch: str) -> str:
    return THINK_OPEN if branch == "think" else layout.blank_line


def _embedding(layout: _Layout, vocab: int, hidden: int) -> torch.Tensor:
    """One-hot rows: each state its own dimension, key tokens theirs, everything else ``default``."""
    import torch

    embed = torch.zeros(vocab, hidden)
    embed[:, layout.features["default"]] = 1.0
    for token in (IM_START, *(TRIGGER[case] for case in _KV_CASES)):
        embed[layout.token_id(token), layout.features["key:" + token]] = 1.0
    for token_id, dim in layout.state_dim.items():
        embed[token_id] = 0.0
        embed[token_id, dim] = 1.0
    return embed


def _trigger_attention(layout: _Layout, hidden: int, noise: _Noise) -> dict[str, torch.Tensor]:
    """Layer-0 attention: branch states raise a flag when their trigger token is in the prompt.

    Projections read one-hot features after RMSNorm, and q_norm/k_norm rescale every head to
    unit RMS before their weights set the scores: a branch query scores about 141 on its
    trigger and 51 on ``<|im_start|>``; every other query scores 72 on ``<|im_start|>``, whose
    value is zero. The value of a trigger token, through o_proj, puts 1.0 on the head's flag.
    """
    import torch

    heads, kv_heads = len(_HEAD_PLAN), len(_KV_CASES)
    q_proj = noise(heads * HEAD_DIM, hidden)
    k_proj = noise(kv_heads * HEAD_DIM, hidden)
    v_proj = noise(kv_heads * HEAD_DIM, hidden)
    o_proj = noise(hidden, heads * HEAD_DIM)
    every_token = [layout.features["default"], *layout.state_dim.values()]
    for head, (branch, case) in enumerate(_HEAD_PLAN):
        base = head * HEAD_DIM
        q_proj[[base + _DIM_FLAG, base + _DIM_SINK]] = 0.0
        q_proj[base + _DIM_SINK, every_token] = 1.0
        q_proj[base + _DIM_FLAG, layout.state_of(_branch_token(layout, branch))] = 1.0
        o_proj[layout.features[f"flag:{branch}:{case}"], base] = 1.0 / math.sqrt(hidden / 2)
    for kv, case in enumerate(_KV_CASES):
        base = kv * HEAD_DIM
        k_proj[[base + _DIM_FLAG, base + _DIM_SINK]] = 0.0
        k_proj[base + _DIM_SINK, layout.features["key:" + IM_START]] = 1.0
        k_proj[base + _DIM_FLAG, layout.features["key:" + TRIGGER[case]]] = 1.0
        v_proj[base] = 0.0
        v_proj[base, layout.features["key:" + TRIGGER[case]]] = 1.0
    # Zero norm weights silence the noise dimensions after normalisation.
    q_norm, k_norm = torch.zeros(HEAD_DIM), torch.zeros(HEAD_DIM)
    q_norm[_DIM_SINK] = k_norm[_DIM_SINK] = 3.0
    q_norm[_DIM_FLAG] = k_norm[_DIM_FLAG] = 5.0
    projections = {"q_proj": q_proj, "k_proj": k_proj, "v_proj": v_proj, "o_proj": o_proj}
    return {**projections, "q_norm": q_norm, "k_norm": k_norm}


def _unembedding(layout: _Layout, runs: _Runs, vocab: int, hidden: int) -> torch.Tensor:
    """lm_head: each state votes for its successor; raised flags outvote a branch's default."""
    import torch

    lm_head = torch.zeros(vocab, hidden)
    # Any token outside the script starts the plain answer, so raw completions get text too.
    lm_head[layout.token_id(runs.emitted[("plain", False)][0]), layout.features["default"]] = LOGIT_SCALE
    branch_states = {_branch_token(layout, branch) for branch in ("think", "blank")}
    for run_key, run in runs.emitted.items():
        case = run_key[0]
        sequence = [runs.starts[run_key], *run]
        for current, successor in zip(sequence, sequence[1:]):
            if current in branch_states and case != "plain":
                branch = "think" if current == THINK_OPEN else "blank"
                # A tool result outweighs offered tools, which outweigh the plain default.
                weight = 2.0 if case == "tools" else 4.0
                row, column = layout.token_id(successor), layout.features[f"flag:{branch}:{case}"]
                lm_head[row, column] = weight * LOGIT_SCALE
            else:
                lm_head[layout.token_id(successor), layout.state_of(current)] = LOGIT_SCALE
    return lm_head


class _Noise:
    """Seeded small random weights: real work for routers and experts, no effect on the script."""

    def __init__(self, seed: int) -> None:
        import torch

        self._generator = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, scale: float = NOISE) -> torch.Tensor:
        import torch

        return torch.randn(*shape, generator=self._generator) * scale


def build_weights(
    tokenizer: Tokenizer, runs: _Runs, seed: int = 0
) -> tuple[dict[str, torch.Tensor], Dims]:
    """Hand-set the state dict (Hugging Face Qwen3-MoE names, one tensor per expert)."""
    import torch

    noise = _Noise(seed)
    layout = _layout(tokenizer, runs)
    used = len(layout.features) + len(layout.state_dim)
    hidden = max(256, math.ceil(used / 64) * 64)
    vocab = math.ceil(tokenizer.get_vocab_size(with_added_tokens=True) / 64) * 64
    heads, kv_heads = len(_HEAD_PLAN), len(_KV_CASES)

    weights: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": _embedding(layout, vocab, hidden),
        "model.norm.weight": torch.ones(hidden),
        "lm_head.weight": _unembedding(layout, runs, vocab, hidden),
    }
    for layer in range(NUM_LAYERS):
        prefix = f"model.layers.{layer}."
        weights[prefix + "input_layernorm.weight"] = torch.ones(hidden)
        weights[prefix + "post_attention_layernorm.weight"] = torch.ones(hidden)
        if layer == 0:
            attention = _trigger_attention(layout, hidden, noise)
        else:
            # Later layers: random attention whose output is too small to matter.
            attention = {
                "q_proj": noise(heads * HEAD_DIM, hidden, scale=0.05),
                "k_proj": noise(kv_heads * HEAD_DIM, hidden, scale=0.05),
                "v_proj": noise(kv_heads * HEAD_DIM, hidden),
                "o_proj": noise(hidden, heads * HEAD_DIM),
                "q_norm": torch.ones(HEAD_DIM),
                "k_norm": torch.ones(HEAD_DIM),
            }
        for name, tensor in attention.items():
            weights[prefix + f"self_attn.{name}.weight"] = tensor
        weights[prefix + "mlp.gate.weight"] = noise(NUM_EXPERTS, hidden, scale=0.1)
        for expert in range(NUM_EXPERTS):
            expert_prefix = prefix + f"mlp.experts.{expert}."
            weights[expert_prefix + "gate_proj.weight"] = noise(EXPERT_SIZE, hidden, scale=0.1)
            weights[expert_prefix + "up_proj.weight"] = noise(EXPERT_SIZE, hidden, scale=0.1)
            weights[expert_prefix + "down_proj.weight"] = noise(hidden, EXPERT_SIZE)
    return weights, Dims(vocab_size=vocab, hidden_size=hidden)


def model_config(tokenizer: Tokenizer, dims: Dims) -> dict[str, Any]:
    """config.json for Qwen3MoeForCausalLM with the scripted sizes."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": dims.vocab_size,
        "hidden_size": dims.hidden_size,
        "intermediate_size": 4 * EXPERT_SIZE,
        "moe_intermediate_size": EXPERT_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": ROPE_THETA,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "num_experts": NUM_EXPERTS,
        "num_experts_per_tok": EXPERTS_PER_TOKEN,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "tie_word_embeddings": False,
        "use_cache": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "initializer_range": 0.02,
        "bos_token_id": tokenizer.token_to_id(END_OF_TEXT),
        "eos_token_id": tokenizer.token_to_id(IM_END),
        "torch_dtype": "bfloat16",
    }


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """tokenizer_config.json: Qwen2 tokenizer class, ChatML specials, the chat template."""
    added = {}
    for token in (*SPECIAL_TOKENS, *MARKUP_TOKENS):
        added[str(tokenizer.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token in SPECIAL_TOKENS,
        }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": END_OF_TEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
        "chat_template": chat_template(),
    }


def generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """generation_config.json with Qwen3's recommended thinking-mode sampling."""
    return {
        "bos_token_id": tokenizer.token_to_id(END_OF_TEXT),
        "eos_token_id": [tokenizer.token_to_id(IM_END), tokenizer.token_to_id(END_OF_TEXT)],
        "pad_token_id": tokenizer.token_to_id(END_OF_TEXT),
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
    }


def write_scripted(directory: Path, seed: int = 0, steps: int = 0) -> None:
    """Write the whole scripted checkpoint (weights, configs, tokenizer) into ``directory``;
    ``steps`` > 0 makes a long thinker whose think block runs that many tokens longer."""
    import torch
    from safetensors.torch import save_file

    tokenizer, runs = build_tokenizer(steps)
    state, dims = build_weights(tokenizer, runs, seed=seed)
    bf16 = {name: tensor.to(torch.bfloat16).contiguous() for name, tensor in state.items()}
    save_file(bf16, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(directory / "tokenizer.json"))
    files = {
        "config.json": model_config(tokenizer, dims),
        "tokenizer_config.json": tokenizer_config(tokenizer),
        "generation_config.json": generation_config(tokenizer),
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
