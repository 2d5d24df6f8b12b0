"""What a checkpoint directory says about how to serve it: parsers, template, sampling defaults.

Picking parsers from the checkpoint matters: a missing ``--reasoning-parser`` leaves ``<think>``
in every answer and silently zeroes every text scorer. The choice is made from ``config.json``
(model family) and the chat template (what markup it renders), and the user can override both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import UserError


@dataclass(frozen=True)
class CheckpointInfo:
    """Facts read from a checkpoint directory without loading any weight."""

    path: Path
    model_type: str
    architectures: tuple[str, ...]
    chat_template: str | None
    max_position_embeddings: int | None
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def chat_template_sha256(self) -> str | None:
        return template_sha256(self.chat_template) if self.chat_template is not None else None


@dataclass(frozen=True)
class ParserChoice:
    """Parsers to launch with, and why each was chosen (shown to the user and recorded)."""

    reasoning_parser: str | None
    tool_call_parser: str | None
    why: str


def template_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object")
    return value


def read_checkpoint(path: Path) -> CheckpointInfo:
    """Read config.json, the chat template and generation_config.json of a local checkpoint."""
    if not path.exists():
        raise UserError(f"model path {path} does not exist: pass a checkpoint directory (bench toy --kind smollm --out DIR makes one)")
    if not path.is_dir():
        raise UserError(f"model path {path} is not a directory: pass the checkpoint directory holding config.json")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} has no config.json: it is not a Hugging Face checkpoint directory")
    config = _read_json(config_path)
    template: str | None = None
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    else:
        tok_config = path / "tokenizer_config.json"
        if tok_config.is_file():
            raw = _read_json(tok_config).get("chat_template")
            if isinstance(raw, str):
                template = raw
            elif isinstance(raw, list):  # named templates: vLLM uses "default"
                named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
                template = named.get("default") or next(iter(named.values()), None)
    gen_path = path / "generation_config.json"
    generation = _read_json(gen_path) if gen_path.is_file() else {}
    nested = config.get("text_config")
    text_config: dict[str, Any] = nested if isinstance(nested, dict) else {}
    max_pos = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    return CheckpointInfo(
        path=path,
        model_type=str(config.get("model_type", "")),
        architectures=tuple(config.get("architectures") or ()),
        chat_template=template,
        max_position_embeddings=int(max_pos) if max_pos else None,
        generation_config=generation,
    )


# Families whose reasoning markup is <think>...</think> and which vLLM's qwen3 parser reads.
_QWEN_FAMILIES = ("qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_6_moe")
_DEEPSEEK_FAMILIES = ("deepseek_v3", "deepseek_v32", "kimi_k2")


def choose_parsers(info: CheckpointInfo) -> ParserChoice:
    """Pick reasoning and tool-call parsers from the model family and the template's markup."""
    template = info.chat_template or ""
    family = info.model_type
    reasons: list[str] = []

    reasoning: str | None = None
    if "<think>" in template or "enable_thinking" in template or "reasoning_content" in template:
        if family.startswith("deepseek") or family in _DEEPSEEK_FAMILIES:
            reasoning = "deepseek_r1"
        else:
            reasoning = "qwen3"
        reasons.append(f"template renders <think> -> reasoning parser {reasoning}")
    elif family in _QWEN_FAMILIES:
        reasoning = "qwen3"
        reasons.append(f"model_type {family} -> reasoning parser qwen3")
    else:
        reasons.append("template has no <think> markup -> no reasoning parser")

    tool: str | None = None
    if "<function=" in template:
        tool = "qwen3_coder"
        reasons.append("template renders <function=...> tool calls -> qwen3_coder")
    elif "<tool_call>" in template:
        tool = "hermes"
        reasons.append("template renders <tool_call> JSON -> hermes")
    elif family.startswith("deepseek") and "tool" in template:
        tool = "deepseek_v3"
        reasons.append(f"model_type {family} -> deepseek_v3 tool parser")
    elif "<|python_tag|>" in template or "ipython" in template:
        tool = "llama3_json"
        reasons.append("Llama 3 tool template -> llama3_json")
    elif family in _QWEN_FAMILIES:
        tool = "hermes"
        reasons.append(f"model_type {family} -> hermes")
    else:
        # Without a parser vLLM rejects every request that offers tools; hermes accepts them, and a
        # model whose template cannot show tools is then measured as not calling them.
        tool = "hermes"
        reasons.append("template renders no tool markup -> hermes as the generic fallback")
    return ParserChoice(reasoning_parser=reasoning, tool_call_parser=tool, why="; ".join(reasons))


# generation_config.json keys that vLLM applies as request defaults (it reads them unless told not to).
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens")


def sampling_defaults(info: CheckpointInfo) -> dict[str, Any]:
    """The sampling defaults the checkpoint imposes on the server: recorded so they are never silent."""
    return {key: info.generation_config[key] for key in SAMPLING_KEYS if key in info.generation_config}
