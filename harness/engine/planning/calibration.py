"""Calibration mixes: datasets -> chat-formatted text -> token ids, with a preflight that fails fast.

A mix is data (YAML): which datasets (each through a schema adapter from
:mod:`bench.engine.planning.schema_adapters`), how many samples from each (counts or weights), the sequence
length and the seed. Named recipes ship in ``harness/engine/recipes/``. Rows are rendered with
the model's own chat template, tools included, so calibration sees what serving sees.

The preflight reads the first rows of every dataset, runs them through their adapter and the
chat template, counts tokens, and estimates time and memory, all before any weight is read: a
drifted schema (a renamed column) fails there in seconds, naming the dataset and the field,
instead of an hour into a pruning run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.moe import resolve_if_moe
from bench.engine.planning.schema_adapters import ADAPTERS, Conversation, SchemaError, make_getter
from bench.engine.planning.sizes import gib
from bench.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RECIPES = "bench.engine.recipes"  # package data: shipped mixes are found in a wheel install too
PREFLIGHT_ROWS = 8


class DatasetSpec(BaseModel):
    """One dataset of a mix."""

    model_config = ConfigDict(extra="forbid")
    adapter: str
    name: str | None = None  # shown in reports; defaults to the adapter name
    weight: float | None = Field(default=None, gt=0)
    count: int | None = Field(default=None, gt=0)
    path: str | None = None  # hub dataset id, overriding the adapter's default
    config: str | None = None
    split: str | None = None
    data_files: str | list[str] | None = None  # local JSON/JSONL/parquet; may use {data_dir}
    fields: dict[str, str] = Field(default_factory=dict)  # canonical field -> column

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.adapter not in ADAPTERS:
            close = difflib.get_close_matches(self.adapter, list(ADAPTERS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown adapter {self.adapter!r}.{hint} Available: {', '.join(ADAPTERS)}")
        if (self.weight is None) == (self.count is None):
            raise ValueError(f"dataset {self.label!r}: give exactly one of weight or count")
        unknown = set(self.fields) - set(ADAPTERS[self.adapter].fields) - set(ADAPTERS[self.adapter].optional)
        if unknown:
            raise ValueError(
                f"dataset {self.label!r}: fields maps {sorted(unknown)}, but adapter {self.adapter!r} reads "
                f"{list(ADAPTERS[self.adapter].fields)}"
            )
        return self

    @property
    def label(self) -> str:
        return self.name or self.adapter


class Mix(BaseModel):
    """A calibration mix: datasets with counts or weights, sequence length, seed."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    seq_len: int = Field(default=2048, gt=0)
    samples: int = Field(default=256, gt=0)
    seed: int = 0
    shuffle_buffer: int = Field(default=1000, gt=0)
    datasets: list[DatasetSpec] = Field(min_length=1)
    data_dir: str | None = None  # filled from --data-dir / BENCH_DATA_DIR, for {data_dir} paths

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def counts(self) -> list[int]:
        """Samples per dataset: explicit counts, and the rest split by weight (largest remainder)."""
        fixed = sum(d.count or 0 for d in self.datasets)
        weighted = [d for d in self.datasets if d.weight is not None]
        remaining = max(self.samples - fixed, 0)
        total_weight = sum(d.weight or 0 for d in weighted) or 1.0
        shares = {id(d): remaining * (d.weight or 0) / total_weight for d in weighted}
        floors = {k: int(v) for k, v in shares.items()}
        leftover = remaining - sum(floors.values())
        for key in sorted(shares, key=lambda k: shares[k] - floors[k], reverse=True)[:leftover]:
            floors[key] += 1
        return [d.count if d.count is not None else floors[id(d)] for d in self.datasets]


def recipe_names() -> list[str]:
    return sorted(e.name.removesuffix(".yaml") for e in resources.files(RECIPES).iterdir() if e.name.endswith(".yaml"))


def load_mix(
    spec: str | Path,
    *,
    data_dir: Path | str | None = None,
    samples: int | None = None,
    seq_len: int | None = None,
    seed: int | None = None,
) -> Mix:
    """A mix from a YAML path or a shipped recipe name, with optional overrides."""
    path = Path(spec)
    if not path.is_file():
        if str(spec) in recipe_names():
            path = Path(str(resources.files(RECIPES) / f"{spec}.yaml"))
        else:
            names = recipe_names()
            close = difflib.get_close_matches(str(spec), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(f"calibration mix {spec!r} is neither a file nor a recipe.{hint} Recipes: {', '.join(names)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping (name, seq_len, samples, seed, datasets)")
    raw.setdefault("name", path.stem)
    try:
        mix = Mix.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: {where}: {first['msg']}") from exc
    updates: dict[str, Any] = {}
    if samples is not None:
        updates["samples"] = samples
    if seq_len is not None:
        updates["seq_len"] = seq_len
    if seed is not None:
        updates["seed"] = seed
    resolved_dir = data_dir or os.environ.get("BENCH_DATA_DIR")
    if resolved_dir:
        updates["data_dir"] = str(Path(resolved_dir).resolve())
    return mix.model_copy(update=updates)


# --------------------------------------------------------------------------------------------
# Reading rows


def _data_files(spec: DatasetSpec, mix: Mix) -> list[str]:
    files = spec.data_files if isinstance(spec.data_files, list) else [spec.data_files or ""]
    out = []
    for file in files:
        if "{data_dir}" in file:
            if not mix.data_dir:
                raise UserError(
                    f"calibration dataset {spec.label!r} uses {{data_dir}}: pass --data-dir or set BENCH_DATA_DIR"
                )
            file = file.replace("{data_dir}", mix.data_dir)
        if not Path(file).is_file():
            raise UserError(f"calibration dataset {spec.label!r}: file {file} does not exist")
        out.append(file)
    return out


def _builder(files: list[str]) -> str:
    suffixes = {"".join(Path(f).suffixes[-2:]) if f.endswith(".gz") else Path(f).suffix for f in files}
    if suffixes <= {".json", ".jsonl", ".json.gz", ".jsonl.gz"}:
        return "json"
    if suffixes <= {".parquet"}:
        return "parquet"
    if suffixes <= {".csv"}:
        return "csv"
    raise UserError(f"calibration files {files} are not all JSON/JSONL, parquet or CSV")


def source_label(spec: DatasetSpec) -> str:
    if spec.data_files:
        return ", ".join(spec.data_files if isinstance(spec.data_files, list) else [spec.data_files])
    hub = ADAPTERS[spec.adapter].hub
    path = spec.path or (hub.path if hub else "?")
    config = spec.config or (hub.config if hub else None)
    split = spec.split or (hub.split if hub else "train")
    return f"{path}" + (f" [{config}]" if config else "") + f" split {split}"


def iter_rows(spec: DatasetSpec, mix: Mix, *, shuffle: bool) -> Iterator[dict[str, Any]]:
    """Rows of one dataset, streamed (hub or local), shuffled with the mix seed when asked."""
    import datasets

    adapter = ADAPTERS[spec.adapter]
    try:
        if spec.data_files:
            files = _data_files(spec, mix)
            stream = datasets.load_dataset(_builder(files), data_files=files, split="train", streaming=True)
        else:
            hub = adapter.hub
            if hub is None and spec.path is None:
                raise UserError(
                    f"calibration dataset {spec.label!r}: adapter {spec.adapter!r} has no hub default; "
                    "give data_files or path"
                )
            stream = datasets.load_dataset(
                spec.path or hub.path,  # type: ignore[union-attr]
                spec.config or (hub.config if hub else None),
                split=spec.split or (hub.split if hub else "train"),
                streaming=True,
            )
        if shuffle:
            stream = stream.shuffle(seed=mix.seed, buffer_size=mix.shuffle_buffer)
        yield from stream
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types for offline/missing/corrupt data
        raise UserError(f"calibration dataset {spec.label!r} ({source_label(spec)}) cannot be read: {exc}") from exc


def convert_row(spec: DatasetSpec, row: dict[str, Any], index: int) -> Conversation:
    """Run one row through its adapter; schema problems name dataset, row and field."""
    adapter = ADAPTERS[spec.adapter]
    try:
        return adapter.convert(make_getter(row, spec.fields), row)
    except SchemaError as exc:
        mapped = {v: k for k, v in spec.fields.items()}
        canonical = mapped.get(exc.field, exc.field)
        fix = (f"; map it with fields: {{{canonical}: <column>}} in the mix" if "missing" in exc.problem else "")
        raise UserError(
            f"calibration dataset {spec.label!r} ({source_label(spec)}) row {index}: {exc}{fix}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Rendering with the model's chat template


def load_tokenizer(model_dir: Path | str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise UserError(f"cannot load the tokenizer of {model_dir}: {exc}") from exc


def render(conversation: Conversation, tokenizer: PreTrainedTokenizerBase) -> str:
    """Text of a conversation as the model's chat template renders it (tools included)."""
    if conversation.text is not None:
        return conversation.text
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    messages = [dict(m) for m in conversation.messages]
    tools = conversation.tools
    if not template:
        # Base models without a template: plain role-prefixed text keeps the content.
        return "\n\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)
    if tools and "tools" not in template:
        # A template that ignores tools would drop them silently: state them in a system turn.
        messages.insert(0, {"role": "system", "content": "Tools:\n" + json.dumps(tools)})
        tools = None
    if "tool_calls" not in template:
        for message in messages:
            calls = message.pop("tool_calls", None)
            if calls:
                rendered = "".join(
                    f"<tool_call>{json.dumps(c.get('function', c))}</tool_call>" for c in calls
                )
                message["content"] = (message.get("content") or "") + rendered
    try:
        return str(tokenizer.apply_chat_template(messages, tools=cast(Any, tools), tokenize=False))
    except Exception as exc:
        raise SchemaError("messages", f"is rejected by the chat template: {exc}") from exc


def tokenize(text: str, conversation: Conversation, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    # Chat-rendered text already carries its special tokens; plain text gets the usual ones.
    ids = tokenizer(text, add_special_tokens=conversation.text is not None)["input_ids"]
    return list(ids)


# --------------------------------------------------------------------------------------------
# Preflight


@dataclass
class DatasetCheck:
    """Preflight result of one dataset."""

    label: str
    source: str
    planned_samples: int
    rows_checked: int
    mean_tokens: float
    estimated_tokens: int
    seconds: float
    example: str


@dataclass
class PreflightReport:
    """What the preflight measured and estimated (nothing here read a model weight)."""

    mix: Mix
    datasets: list[DatasetCheck]
    total_tokens: int
    estimated_seconds: float
    estimated_memory_bytes: int
    matmul_gflops: float
    seconds: float
    notes: list[str] = field(default_factory=list)


def _measure_matmul_gflops(seconds: float = 0.3) -> float:
    """This machine's float32 matmul throughput, measured (used for the time estimate)."""
    import torch

    size = 512
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def preflight(mix: Mix, model_dir: Path | str, *, rows: int = PREFLIGHT_ROWS) -> PreflightReport:
    """Validate the first rows of every dataset and estimate the pruning cost, before reading weights."""
    started = time.perf_counter()
    checkpoint = Checkpoint.open(model_dir)  # headers only
    tokenizer = load_tokenizer(model_dir)
    notes = []
    if not isinstance(tokenizer.chat_template, str) or not tokenizer.chat_template:
        notes.append("the tokenizer has no chat template: chat rows are rendered as plain role-prefixed text")
    checks = []
    for spec, planned in zip(mix.datasets, mix.counts(), strict=True):
        t0 = time.perf_counter()
        lengths, example = [], ""
        for index, row in enumerate(iter_rows(spec, mix, shuffle=False)):
            if index >= rows:
                break
            conversation = convert_row(spec, row, index)
            try:
                text = render(conversation, tokenizer)
            except SchemaError as exc:
                raise UserError(f"calibration dataset {spec.label!r} ({source_label(spec)}) row {index}: {exc}") from exc
            lengths.append(min(len(tokenize(text, conversation, tokenizer)), mix.seq_len))
            example = example or text[:160]
        if not lengths:
            raise UserError(f"calibration dataset {spec.label!r} ({source_label(spec)}) has no rows")
        mean = sum(lengths) / len(lengths)
        checks.append(DatasetCheck(spec.label, source_label(spec), planned, len(lengths), mean,
                                   round(mean * planned), time.perf_counter() - t0, example))
    total_tokens = sum(c.estimated_tokens for c in checks)
    gflops = _measure_matmul_gflops()
    seconds, memory = _estimate_cost(checkpoint, resolve_if_moe(checkpoint), total_tokens, gflops)
    return PreflightReport(mix, checks, total_tokens, seconds, memory, gflops, time.perf_counter() - started, notes)


def _estimate_cost(checkpoint: Any, moe: Any, tokens: int, gflops: float) -> tuple[float, int]:
    """(seconds, bytes) for scoring ``tokens`` tokens layer by layer, from headers.

    Time: two passes per layer (score, then the pruned layer's outputs) of 2 FLOPs per active
    parameter per token, at the measured matmul rate. Memory: the calibration hidden states in
    float32 (inputs and outputs) plus the largest decoder layer in float32.
    """
    hidden = int((moe.text if moe else checkpoint.config).get("hidden_size", 0) or 0)
    layer_numel: dict[str, int] = {}
    expert_numel = 0
    for info in checkpoint.tensors.values():
        parts = info.name.split(".")
        if "layers" in parts:
            key = ".".join(parts[: parts.index("layers") + 2])
            layer_numel[key] = layer_numel.get(key, 0) + info.numel
    if moe is not None:
        expert_numel = sum(checkpoint.tensors[n].numel for n in moe.expert_tensor_names())
    dense_numel = sum(layer_numel.values()) - expert_numel
    active = dense_numel + (expert_numel * moe.top_k / moe.n_experts if moe else 0)
    seconds = 2 * 2 * active * tokens / max(gflops * 1e9, 1.0)
    memory = tokens * hidden * 4 * 2 + max(layer_numel.values(), default=0) * 4
    return seconds, int(memory)


def render_preflight(report: PreflightReport) -> str:
    lines = [f"calibration mix {report.mix.name}: {report.mix.samples} samples x <= {report.mix.seq_len} tokens, "
             f"seed {report.mix.seed}"]
    for c in report.datasets:
        lines.append(
            f"  {c.label:<28} {c.planned_samples:>5} samples  ~{c.mean_tokens:7.0f} tok/sample  "
            f"({c.rows_checked} rows checked in {c.seconds:.1f} s) {c.source}"
        )
    lines.append(
        f"~{report.total_tokens} tokens; estimated scoring time {report.estimated_seconds:.0f} s at "
        f"{report.matmul_gflops:.1f} GFLOP/s, memory {gib(report.estimated_memory_bytes)} "
        f"(preflight took {report.seconds:.1f} s)"
    )
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Building the samples


@dataclass
class CalibrationSamples:
    """Token ids of every calibration sample, and a hash that identifies them."""

    token_ids: list[list[int]]
    sha256: str
    per_dataset: dict[str, int]

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)


def build_samples(mix: Mix, model_dir: Path | str) -> CalibrationSamples:
    """Draw, render and tokenize every sample of the mix (seeded; truncated to ``seq_len``)."""
    tokenizer = load_tokenizer(model_dir)
    samples: list[list[int]] = []
    per_dataset: dict[str, int] = {}
    for spec, wanted in zip(mix.datasets, mix.counts(), strict=True):
        taken = 0
        for index, row in enumerate(iter_rows(spec, mix, shuffle=True)):
            if taken >= wanted:
                break
            conversation = convert_row(spec, row, index)
            try:
                text = render(conversation, tokenizer)
            except SchemaError as exc:
                raise UserError(f"calibration dataset {spec.label!r} row {index}: {exc}") from exc
            ids = tokenize(text, conversation, tokenizer)[: mix.seq_len]
            if len(ids) >= 2:
                samples.append(ids)
                taken += 1
        per_dataset[spec.label] = taken
        if taken == 0:
            raise UserError(f"calibration dataset {spec.label!r} ({source_label(spec)}) produced no samples")
    digest = hashlib.sha256()
    recipe = {k: v for k, v in mix.to_dict().items() if k != "data_dir"}  # same data, same hash anywhere
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    for ids in samples:
        digest.update(json.dumps(ids).encode())
    return CalibrationSamples(samples, digest.hexdigest(), per_dataset)
