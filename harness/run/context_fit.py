"""Which items' prompts cannot fit the server's context, found before a launch with the checkpoint's
own tokenizer, so a run never spends a server start to learn that an item can only fail.

The harness process needs no torch (importing ``transformers`` imports it, seconds per command), so
the chat template is rendered with jinja2 the way the server renders it and counted with
``tokenizers`` from ``tokenizer.json``. A template that cannot be rendered here falls back to the
bare message text, a lower bound, so only items that surely cannot fit are named. Without a
``tokenizer.json`` the check is skipped with a note.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from bench.pack import Item, Pack
from bench.run.runner import RunPlan
from bench.serve.model_info import read_checkpoint

Counter = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], int]


@dataclass
class Overflow:
    pack: str
    item_id: str
    prompt_tokens: int


def _special_tokens(model_dir: Path) -> dict[str, str]:
    """bos/eos/pad/unk tokens as the template sees them (tokenizer_config.json holds str or {content})."""
    path = model_dir / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    return env.from_string(source)


def _tokenizers_counter(model_dir: Path) -> Counter | None:
    path = model_dir / "tokenizer.json"
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # no tokenizers package, or no tokenizer.json
        return None
    try:
        source = read_checkpoint(model_dir).chat_template
        template = _template(source) if source else None
    except Exception:  # an unreadable checkpoint or a template jinja2 cannot parse: count bare text
        template = None
    specials = _special_tokens(model_dir)

    def bare(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        text = "\n".join(str(m.get("content") or "") for m in messages)
        return text + ("\n" + json.dumps(tools) if tools else "")

    def count(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
        text = None
        if template is not None:
            try:
                text = template.render(messages=messages, tools=tools, add_generation_prompt=True, **specials)
            except Exception:  # the template needs something only the server's renderer has
                text = None
        return len(tokenizer.encode(text if text is not None else bare(messages, tools), add_special_tokens=False).ids)

    return count


def load_counter(model_dir: Path) -> Counter | None:
    """A prompt-token counter for the checkpoint, or None when no tokenizer can be loaded."""
    return _tokenizers_counter(model_dir)


def _first_prompt(pack: Pack, item: Item) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None] | None:
    try:
        return pack.messages(item), pack.tools(item)
    except Exception:  # a pack that builds its prompts inside run_item only: nothing to check up front
        return None


def overflowing(packs: dict[str, tuple[Pack, list[Item]]], count: Counter, max_model_len: int) -> list[Overflow]:
    """Items whose first prompt leaves no room for a single output token at ``max_model_len``."""
    found = []
    for name, (pack, items) in packs.items():
        for item in items:
            prompt = _first_prompt(pack, item)
            if prompt is None:
                continue
            tokens = count(*prompt)
            if tokens >= max_model_len:
                found.append(Overflow(name, item.id, tokens))
    return found


def describe(found: list[Overflow], max_model_len: int) -> str:
    """The one line that names them and the fix."""
    longest = max(found, key=lambda o: o.prompt_tokens)
    named = ", ".join(f"{o.pack}/{o.item_id}" for o in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (f"{len(found)} item(s) do not fit at max-model-len {max_model_len}: raise it to more than "
            f"{longest.prompt_tokens} (--max-model-len), or leave them out with --limit/--packs ({named})")


def mark_unfit(plan: RunPlan, model: str | None, max_model_len: int, echo: Callable[[str], object]) -> None:
    """Before a launch: name the items that cannot fit and set them aside in ``plan.unfit`` (recorded
    with the reason, never sent); a checkpoint without a loadable tokenizer is noted and not checked."""
    if not model:
        return
    count = load_counter(Path(model).expanduser())
    if count is None:
        echo(f"note: prompt lengths not checked against max-model-len {max_model_len}: no tokenizer could be loaded from {model}")
        return
    found = overflowing({name: (p.pack, p.items) for name, p in plan.packs.items()}, count, max_model_len)
    if not found:
        return
    echo(f"note: {describe(found, max_model_len)}; they are recorded as not asked")
    for overflow in found:
        plan.unfit[(overflow.pack, overflow.item_id)] = (
            f"does not fit at max-model-len {max_model_len}: raise it (prompt of {overflow.prompt_tokens} tokens)")
