"""Build the shipped divergence text set from local data and the packs' own reference answers.

``python -m bench.divergence.build_texts --data-dir DIR --out harness/divergence/texts.jsonl``

Sources (all offline): HumanEval+ prompts with their canonical solutions and the bugfind pack's
programs with their reference findings (code); the reasonmath pack's problems with reference answers
and MMLU dev-split math questions (math); MMLU dev-split questions of every other subject (knowledge);
the toolcall pack's tasks as whole conversations, its reference calls answered by its own mock tools
(toolcall); the instructfollow, dataextract, structout and cli packs' prompts with reference replies
(chat). The calibration samples are left out on purpose, and MMLU's dev split is used because the
shipped calibration mixes draw on its test and auxiliary splits: nothing here was seen by pruning.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.divergence.texts import DOMAINS, Text

PER_DOMAIN = 60
MAX_CHARS = 6000  # about 1.5K tokens for a 150K-vocabulary tokenizer
HUMANEVAL = "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"
MMLU_DEV = "mmlu/mmlu_all_dev.parquet"
MATH_SUBJECTS = frozenset({"abstract_algebra", "college_mathematics", "elementary_mathematics",
                           "high_school_mathematics", "high_school_statistics", "college_physics",
                           "high_school_physics", "econometrics", "formal_logic"})
LETTERS = "ABCD"


def _fits(text: Text) -> bool:
    body = text.text if text.text is not None else json.dumps(text.messages) + json.dumps(text.tools or [])
    return len(body) <= MAX_CHARS


def humaneval(data_dir: Path) -> Iterator[Text]:
    with gzip.open(data_dir / HUMANEVAL, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            yield Text(id=f"code/humanevalplus/{row['task_id']}", domain="code", source="humanevalplus",
                       text=row["prompt"] + row["canonical_solution"])


def _mmlu_rows(data_dir: Path) -> list[dict[str, Any]]:
    import pandas as pd

    frame = pd.read_parquet(data_dir / MMLU_DEV)
    return [dict(row) for row in frame.to_dict(orient="records")]


def _mmlu_text(row: dict[str, Any]) -> str:
    subject = str(row["subject"]).replace("_", " ")
    choices = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(row["choices"]))
    answer = int(row["answer"])
    return (f"The following is a question about {subject}.\n\n{row['question']}\n{choices}\n"
            f"Answer: {LETTERS[answer]}. {row['choices'][answer]}\n")


def mmlu(data_dir: Path, math: bool) -> Iterator[Text]:
    domain = "math" if math else "knowledge"
    for index, row in enumerate(_mmlu_rows(data_dir)):
        if (row["subject"] in MATH_SUBJECTS) == math:
            yield Text(id=f"{domain}/mmlu-dev/{row['subject']}-{index}", domain=domain, source="mmlu-dev",
                       text=_mmlu_text(row))


def _pack(name: str) -> Any:
    from bench import registry

    return registry.load(name)


def reply_packs(domain: str, names: Iterable[str]) -> Iterator[Text]:
    """Single-turn pack items: the pack's own messages, then its reference reply."""
    for name in names:
        pack = _pack(name)
        for item in pack.items("full"):
            content = (item.reference or {}).get("content")
            if not isinstance(content, str) or not content.strip():
                continue
            messages = [*pack.messages(item), {"role": "assistant", "content": content}]
            yield Text(id=f"{domain}/{name}/{item.id}", domain=domain, source=f"pack:{name}", messages=messages)


def _assistant(turn: dict[str, Any], step: int) -> dict[str, Any]:
    calls = [{"id": f"call_{step}_{index}", "type": "function",
              "function": {"name": call["name"], "arguments": call["arguments"]}}
             for index, call in enumerate(turn.get("tool_calls") or [])]
    message: dict[str, Any] = {"role": "assistant", "content": turn.get("content") or ("" if calls else None)}
    if calls:
        message["tool_calls"] = calls
    return message


def toolcall() -> Iterator[Text]:
    """Whole tool-call conversations: the reference calls, answered by the pack's mock tools."""
    from bench.packs.toolcall.mock import mock_result
    from bench.transcript import ToolCall

    pack = _pack("toolcall")
    for item in pack.items("full"):
        reference = item.reference or {}
        turns = reference.get("turns") or [reference]
        messages = list(pack.messages(item))
        for step, turn in enumerate(turns):
            assistant = _assistant(turn, step)
            messages.append(assistant)
            scripted = item.data["turns"][step] if step < len(item.data["turns"]) else {}
            if step == len(turns) - 1 or not scripted.get("results"):
                break  # the conversation ends on the model's last reply: a call or an answer
            for call in assistant.get("tool_calls", []):
                function = call["function"]
                result = mock_result(scripted, ToolCall(id=call["id"], name=function["name"], arguments=function["arguments"]))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        yield Text(id=f"toolcall/toolcall/{item.id}", domain="toolcall", source="pack:toolcall",
                   messages=messages, tools=pack.tools(item))


def interleave(*sources: Iterable[Text]) -> Iterator[Text]:
    """Round-robin over sources, so the first texts of a domain (the quick tier) cover each."""
    for group in itertools.zip_longest(*sources):
        yield from (text for text in group if text is not None)


def build(data_dir: Path) -> list[Text]:
    domains: dict[str, Iterable[Text]] = {
        "code": interleave(humaneval(data_dir), reply_packs("code", ["bugfind"])),
        "math": interleave(reply_packs("math", ["reasonmath"]), mmlu(data_dir, math=True)),
        "knowledge": mmlu(data_dir, math=False),
        "toolcall": toolcall(),
        "chat": interleave(*(reply_packs("chat", [name]) for name in ("instructfollow", "dataextract", "structout", "cli"))),
    }
    texts: list[Text] = []
    for domain in DOMAINS:
        texts += list(itertools.islice((t for t in domains[domain] if _fits(t)), PER_DOMAIN))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding humanevalplus/ and mmlu/")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    texts = build(args.data_dir)
    lines = [json.dumps(text.model_dump(exclude_none=True), ensure_ascii=False, sort_keys=True) for text in texts]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts = {d: sum(t.domain == d for t in texts) for d in DOMAINS}
    print(f"wrote {len(texts)} texts to {args.out}: {counts}")


if __name__ == "__main__":
    main()
