"""Write synthetic but schema-valid run directories for gate and report tests.

The runs go through the real store (schema validation on write) and the real aggregator, with
the real pack names and subdimensions; only the model's answers are made up. A baseline and a
candidate built from the same ``seed`` answer every item identically unless a regression is
planted, so a test knows exactly what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.pack import Item, Pack, Score, Tier
from bench.records import Flags, ItemRecord, Manifest, PackEntry, PreflightCheck, ServerInfo
from bench.run.aggregate import build_results
from bench.run.store import RunStore
from bench.transcript import Exchange, Request, Response, ToolCall, Transcript, Usage

SUBDIMENSIONS: dict[str, tuple[str, ...]] = {
    "toolcall": ("tool_selection", "parameter_precision", "call_structure", "restraint", "multi_step"),
    "mmlu": ("stem", "humanities", "social_sciences", "other"),
    "code": ("humaneval_plus",),
    "bugfind": ("locate", "explain"),
    "dataextract": ("fields", "format"),
    "instructfollow": ("constraints", "format"),
}
MMLU_SUBJECTS = {
    "stem": ("college_physics", "abstract_algebra"),
    "humanities": ("philosophy", "world_religions"),
    "social_sciences": ("econometrics", "sociology"),
    "other": ("nutrition", "marketing"),
}
TEMPLATE_SHA = hashlib.sha256(b"fixture chat template").hexdigest()
HOSTILE_CONTENT = "<script>alert('x')</script><img src=x onerror=\"alert('y')\"> done"
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


class FixturePack(Pack):
    """Stands in for a real pack inside the aggregator: same name, version and subdimensions."""

    def __init__(self, name: str, version: str = "1") -> None:
        self.name = name
        self.version = version
        self.subdimensions = SUBDIMENSIONS[name]
        self.breakdowns = ("subject",) if name == "mmlu" else ()

    def items(self, tier: Tier = "full") -> list[Item]:
        return []

    def score(self, item: Item, transcript: Transcript) -> Score:
        raise NotImplementedError("fixture runs are scored when written")

    def item_by_id(self, item_id: str) -> Item | None:
        """Fixture items exist only as ids (``mmlu-0007``); MMLU's carry the subject ``_score`` gives them."""
        if self.name != "mmlu":
            return None
        return Item(id=item_id, data={"subject": _subject(int(item_id.rsplit("-", 1)[1]))})


def _subject(index: int) -> str:
    subdims = SUBDIMENSIONS["mmlu"]
    return MMLU_SUBJECTS[subdims[index % len(subdims)]][index // len(subdims) % 2]


def _transcript(
    pack: str, index: int, passed: bool, content: str, latency: float, leaked: bool, reasoning_chars: int = 0
) -> Transcript:
    request = Request(
        messages=[{"role": "user", "content": f"{pack} question {index}: what is {index} + {index}?"}],
        tools=[WEATHER_TOOL] if pack == "toolcall" else None,
        sampling={"temperature": 0.0, "max_tokens": 512},
    )
    tool_calls = []
    if pack == "toolcall" and index % 5 != 3:  # restraint items expect no call
        city = "Paris" if passed else "Pari"
        tool_calls = [ToolCall(id=f"call-{index}", name="get_weather", arguments=json.dumps({"city": city}))]
    reasoning = f"<think>working on {index}</think>" if leaked else f"The user asks about item {index}."
    if reasoning_chars > len(reasoning):
        filler = " Considering the options one by one before answering."
        reasoning = (reasoning + filler * (reasoning_chars // len(filler) + 1))[:reasoning_chars]
    response = Response(
        content=None if tool_calls else content,
        reasoning=reasoning,
        tool_calls=tool_calls,
        finish_reason="tool_calls" if tool_calls else "stop",
        usage=Usage(prompt_tokens=40 + index % 17, completion_tokens=20 + index % 31, reasoning_tokens=10),
        latency_s=latency,
        endpoint="http://127.0.0.1:8000/v1",
    )
    if leaked:
        response.content = f"<think>leaked</think>{content}"
        response.tool_calls = []
    return Transcript(exchanges=[Exchange(request=request, response=response)])


def _score(pack: str, index: int, value: float) -> Score:
    subdims = SUBDIMENSIONS[pack]
    subdim = subdims[index % len(subdims)]
    details: dict[str, Any] = {}
    if pack == "mmlu":
        details["subject"] = _subject(index)
    return Score(
        value=value,
        passed=value >= 1.0,
        subscores={subdim: value},
        reason="matches the expected answer" if value >= 1.0 else "differs from the expected answer",
        details=details,
    )


def _latent_values(pack: str, n: int, seed: int) -> np.ndarray:
    """Each item's baseline value: pass/fail for mmlu and code, graded in halves elsewhere."""
    rng = np.random.default_rng([seed, sum(pack.encode())])
    if pack in ("mmlu", "code"):
        return (rng.random(n) < 0.7).astype(float)
    return rng.choice([0.0, 0.5, 1.0], size=n, p=[0.15, 0.15, 0.7])


def write_run(
    runs_dir: Path,
    run_id: str,
    *,
    packs: Sequence[str] = ("toolcall", "mmlu"),
    n_per_pack: int = 60,
    seed: int = 0,
    regress: Mapping[str, float] | None = None,
    regress_subdimension: Mapping[str, str] | None = None,
    template_sha: str = TEMPLATE_SHA,
    pack_versions: Mapping[str, str] | None = None,
    leaked_items: int = 0,
    drop_items: Mapping[str, int] | None = None,
    repeats: int = 1,
    repeat_noise: float = 0.0,
    hostile_items: Sequence[str] = (),
    preflight_ok: bool = True,
    latency_scale: float = 1.0,
    reasoning_chars: int = 0,
    truncated_subdimension: Mapping[str, str] | None = None,
    truncated_items: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Write manifest.json, items.jsonl and results.json for a synthetic run; return its path.

    Args:
        regress: pack -> fraction of the baseline's full-score items that now score 0.
        regress_subdimension: pack -> the only subdimension whose items regress.
        leaked_items: this many items (of the first pack) leak <think> markup into content.
        drop_items: pack -> number of items the run never finished (the run is then incomplete).
        repeats: records per item (seeds recorded); ``repeat_noise`` flips that share of repeats.
        hostile_items: item ids whose content is markup that must render as text.
        reasoning_chars: pad each reasoning to this length (realistic item sizes for benchmarks).
        truncated_subdimension: pack -> a subdimension whose every reply is cut at max_tokens
            (scored 0 with status "truncated" and, as packs do, no subscores).
        truncated_items: pack -> indices of the items whose replies are cut at max_tokens.
    """
    regress = regress or {}
    regress_subdimension = regress_subdimension or {}
    drop_items = drop_items or {}
    pack_versions = pack_versions or {}
    store = RunStore.create(runs_dir, run_id)
    fixture_packs = {name: FixturePack(name, pack_versions.get(name, "1")) for name in packs}
    manifest = Manifest(
        run_id=run_id,
        created_at="2025-01-01T00:00:00Z",
        bench_version="0.1.0",
        model=f"/models/{run_id}",
        server=ServerInfo(
            launched=True,
            command=["python", "-m", "vllm.entrypoints.openai.api_server", "--model", f"/models/{run_id}"],
            endpoints=["http://127.0.0.1:8000/v1"],
            served_model_name=run_id,
            vllm_version="0.32.0",
            reasoning_parser="qwen3",
            tool_call_parser="hermes",
            chat_template_sha256=template_sha,
            chat_template_source="tokenizer_config.json",
            max_model_len=2048,
        ),
        preflight=[PreflightCheck(name="reasoning_parser", ok=preflight_ok, detail="probe")],
        packs=[
            PackEntry(
                name=name,
                version=fixture_packs[name].version,
                data_hash=hashlib.sha256(name.encode()).hexdigest(),
                items=n_per_pack,
                tier="full",
                subdimensions=list(SUBDIMENSIONS[name]),
                sampling={"temperature": 0.0, "max_tokens": 512},
            )
            for name in packs
        ],
        repeats=repeats,
        seed=seed,
        concurrency=8,
        status="complete",
    )
    store.write_manifest(manifest)
    records: list[ItemRecord] = []
    leaks_left = leaked_items
    for pack in packs:
        values = _latent_values(pack, n_per_pack, seed)
        rng = np.random.default_rng([seed, 7, sum(pack.encode())])
        flip = rng.random(n_per_pack) < regress.get(pack, 0.0)
        only = regress_subdimension.get(pack)
        subdims = SUBDIMENSIONS[pack]
        noise_rng = np.random.default_rng([seed, 11, sum(pack.encode()), len(run_id)])
        for index in range(n_per_pack - drop_items.get(pack, 0)):
            value = float(values[index])
            in_scope = only is None or subdims[index % len(subdims)] == only
            if flip[index] and value >= 1.0 and in_scope:
                value = 0.0
            for repeat in range(repeats):
                shown = value
                if repeat_noise and noise_rng.random() < repeat_noise:
                    shown = 1.0 - value if value in (0.0, 1.0) else 1.0
                item_id = f"{pack}-{index:04d}"
                leaked = pack == packs[0] and leaks_left > 0
                leaks_left -= int(leaked)
                content = HOSTILE_CONTENT if item_id in hostile_items else f"The answer to {item_id} is {2 * index}."
                transcript = _transcript(
                    pack, index, shown >= 1.0, content, 0.2 * latency_scale + 0.001 * index, leaked, reasoning_chars
                )
                score = _score(pack, index, shown)
                flags = Flags(leaked_markers=int(leaked))
                if ((truncated_subdimension or {}).get(pack) == subdims[index % len(subdims)]
                        or index in (truncated_items or {}).get(pack, ())):
                    transcript.exchanges[-1].response.finish_reason = "length"
                    score = Score(value=0.0, passed=False, status="truncated", reason="response cut off at max_tokens")
                    flags.truncated = 1
                records.append(
                    ItemRecord(
                        pack=pack,
                        pack_version=fixture_packs[pack].version,
                        item_id=item_id,
                        repeat=repeat,
                        seed=seed + repeat,
                        transcript=transcript,
                        score=score,
                        flags=flags,
                        started_at="2025-01-01T00:00:00Z",
                        finished_at="2025-01-01T00:00:01Z",
                        elapsed_s=transcript.exchanges[-1].response.latency_s,
                    )
                )
    store.rewrite_items(records)
    expected = {name: n_per_pack * repeats for name in packs}
    results = build_results(run_id, fixture_packs, records, expected, preflight_ok=preflight_ok, seed=seed)
    store.write_results(results)
    return store.root
