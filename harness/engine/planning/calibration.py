"""Calibration mixes: datasets -> chat-formatted text -> token ids, with a preflight that fails fast.

A mix is data (YAML): which datasets (each through a schema adapter from
:mod:`bench.engine.planning.schema_adapters`), how many samples from each (counts or weights), the sequence
length, whether rows are packed into full-length sequences, the seed, and how scoring weighs
expert outputs (``score_gates``). Named recipes ship in ``harness/engine/recipes/``. Rows are
rendered with the model's own chat template, tools included, so calibration sees what serving sees.
Datasets are either task data or general text (``general``; C4 and MMLU are general unless a mix
says otherwise), and :meth:`Mix.with_general_share` rescales the two groups, so a plan can sweep
the proportion.

The estimate needs no data: from the declared counts and the checkpoint's headers it gives the
token budget, the time, and the memory on each side (host RAM, scratch disk for the hidden states
between layers, the scoring device). The preflight then reads the first rows of every dataset,
runs them through their adapter and the chat template, and counts tokens, all before any weight
is read: a drifted schema (a renamed column) fails there in seconds, naming the dataset and the
field, instead of an hour into a pruning run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.engine.planning.calibration_cost import ScoringCost, estimate_scoring_cost, render_cost
from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.moe import resolve_if_moe
from bench.engine.planning.schema_adapters import ADAPTERS, Conversation, SchemaError, make_getter
from bench.engine.planning.sizes import gib
from bench.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RECIPES = "bench.engine.recipes"  # package data: shipped mixes are found in a wheel install too
PREFLIGHT_ROWS = 8
GENERAL_ADAPTERS = ("c4", "mmlu", "text")  # general text unless a mix marks them otherwise
ScoreGates = Literal["router", "renormalized", "raw"]


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
    general: bool | None = None  # general text (not task data); default: true for c4, mmlu, text

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

    @property
    def is_general(self) -> bool:
        return self.general if self.general is not None else self.adapter in GENERAL_ADAPTERS


class Mix(BaseModel):
    """A calibration mix: datasets with counts or weights, sequence length, packing, seed, score gates."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    seq_len: int = Field(default=2048, gt=0)
    samples: int = Field(default=256, gt=0)
    # Pack rows end to end into sequences of exactly seq_len tokens (a sample is then one packed
    # sequence); otherwise a sample is one row, cut at seq_len.
    pack: bool = False
    seed: int = 0
    # How scoring weighs each routed expert's output (see bench.engine.planning.prune_plan.SCORE_GATES);
    # None leaves it to the prune options (default "router").
    score_gates: ScoreGates | None = None
    shuffle_buffer: int = Field(default=1000, gt=0)
    datasets: list[DatasetSpec] = Field(min_length=1)
    data_dir: str | None = None  # filled from --data-dir / BENCH_DATA_DIR, for {data_dir} paths

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        if not self.pack:
            data.pop("pack")  # unpacked mixes keep the identity (and cache keys) they had before packing existed
        return data

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

    @property
    def max_tokens(self) -> int:
        """Tokens at most (exactly, when packed): the declared samples at full length."""
        return sum(self.counts()) * self.seq_len

    def general_share(self) -> float:
        """Share of the samples drawn from general-text datasets."""
        counts = self.counts()
        return sum(c for d, c in zip(self.datasets, counts, strict=True) if d.is_general) / (sum(counts) or 1)

    def with_general_share(self, share: float) -> Mix:
        """The same mix with ``share`` of its samples from general text, the rest from task data.

        The total stays the same; within each group, datasets keep their proportions (largest
        remainder), and every dataset gets an explicit count. The name says the share, so a sweep's
        mixes (and their cached steps) stay apart.
        """
        if not 0 <= share <= 1:
            raise UserError(f"general_share {share} must be in [0, 1]")
        general = [d.is_general for d in self.datasets]
        if share > 0 and not any(general):
            raise UserError(f"calibration mix {self.name!r} has no general-text dataset (C4, MMLU, or one marked "
                            "general: true) for general_share to scale")
        if share < 1 and all(general):
            raise UserError(f"calibration mix {self.name!r} has only general-text datasets: general_share "
                            f"{share} needs task data too")
        counts = self.counts()
        total = sum(counts)
        wanted = {True: round(total * share), False: total - round(total * share)}
        new_counts = list(counts)
        for group in (True, False):
            members = [i for i, g in enumerate(general) if g == group]
            new_counts = _split(new_counts, members, wanted[group], [counts[i] for i in members])
        datasets = [d.model_copy(update={"count": c, "weight": None}) for d, c in zip(self.datasets, new_counts,
                                                                                      strict=True)]
        if any(c == 0 for c in new_counts):
            empty = [d.label for d, c in zip(self.datasets, new_counts, strict=True) if c == 0]
            raise UserError(f"general_share {share} leaves no samples for {', '.join(empty)} in mix {self.name!r}: "
                            "raise --samples or choose a share further from 0 and 1")
        return self.model_copy(update={"name": f"{self.name}-general{round(share * 100)}", "datasets": datasets,
                                       "samples": total})


def _split(counts: list[int], members: list[int], total: int, weights: list[int]) -> list[int]:
    """``counts`` with ``total`` spread over ``members`` in proportion to ``weights`` (largest remainder)."""
    out = list(counts)
    if not members:
        return out
    weight_sum = sum(weights) or len(weights)
    shares = [total * (w if sum(weights) else 1) / weight_sum for w in weights]
    floors = [int(s) for s in shares]
    order = sorted(range(len(members)), key=lambda k: shares[k] - floors[k], reverse=True)
    for k in order[: total - sum(floors)]:
        floors[k] += 1
    for member, value in zip(members, floors, strict=True):
        out[member] = value
    return out


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
        if all(d.count is not None for d in mix.datasets):  # counts only: scale them to the new total
            scaled = _split([0] * len(mix.datasets), list(range(len(mix.datasets))), samples, mix.counts())
            updates["datasets"] = [d.model_copy(update={"count": max(c, 1)}) for d, c in zip(mix.datasets, scaled,
                                                                                            strict=True)]
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
    datasets: list[DatasetCheck]  # empty when no rows were read (an estimate from declared counts)
    total_tokens: int  # tokens the run will score: measured mean x counts, else the declared maximum
    cost: ScoringCost  # at total_tokens
    declared: ScoringCost  # at the declared maximum (every sample full length)
    scratch_dir: Path
    scratch_free: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def estimated_seconds(self) -> float:
        return self.cost.seconds


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


def preflight(mix: Mix, model_dir: Path | str, *, rows: int = PREFLIGHT_ROWS, device: str = "cpu",
              scratch_dir: Path | str | None = None, chunk_tokens: int = 4096) -> PreflightReport:
    """Check the first ``rows`` rows of every dataset and estimate the scoring cost, before reading weights.

    With ``rows=0`` no data is read at all: the estimate then rests on the declared counts, every
    sample at full length (exact for packed mixes, an upper bound otherwise), and a scratch disk too
    small is a warning. After reading rows it fails here, naming the flag that moves the scratch.
    """
    started = time.perf_counter()
    checkpoint = Checkpoint.open(model_dir)  # headers only
    moe = resolve_if_moe(checkpoint)
    notes: list[str] = []
    checks = _check_rows(mix, model_dir, rows, notes) if rows > 0 else []
    if checks and not mix.pack:
        total_tokens = sum(c.estimated_tokens for c in checks)
    else:
        total_tokens = mix.max_tokens
        if not mix.pack:
            notes.append("no rows read: tokens, time and scratch are upper bounds (every sample at full length)")
    gflops = _measure_matmul_gflops()
    declared = estimate_scoring_cost(checkpoint, moe, tokens=mix.max_tokens, seq_len=mix.seq_len, gflops=gflops,
                                     device=device, chunk_tokens=chunk_tokens)
    cost = estimate_scoring_cost(checkpoint, moe, tokens=total_tokens, seq_len=mix.seq_len, gflops=gflops,
                                 device=device, chunk_tokens=chunk_tokens)
    where = Path(scratch_dir or tempfile.gettempdir()).expanduser()
    if not where.is_dir():
        raise UserError(f"scratch directory {where} does not exist: create it or pass another --scratch-dir")
    free = shutil.disk_usage(where).free
    if cost.scratch_bytes > free:
        message = (f"scoring {total_tokens} calibration tokens needs {gib(cost.scratch_bytes)} of scratch for the "
                   f"hidden states between layers; {where} has {gib(free)} free: pass --scratch-dir on a larger "
                   "disk, or fewer --samples / a shorter --seq-len")
        if checks:  # rows were read: the run is about to start, and would fail hours in
            raise UserError(message)
        notes.append(f"warning: {message}")
    if device.split(":")[0] != "cpu":
        notes.append(f"the time is at this CPU's matmul rate; {device} is usually much faster")
    return PreflightReport(mix, checks, total_tokens, cost, declared, where, free, time.perf_counter() - started,
                           notes)


def _check_rows(mix: Mix, model_dir: Path | str, rows: int, notes: list[str]) -> list[DatasetCheck]:
    """Read, convert, render and tokenize the first ``rows`` rows of every dataset."""
    tokenizer = load_tokenizer(model_dir)
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
        mean = mix.seq_len if mix.pack else sum(lengths) / len(lengths)
        checks.append(DatasetCheck(spec.label, source_label(spec), planned, len(lengths), mean,
                                   round(mean * planned), time.perf_counter() - t0, example))
    return checks


def render_preflight(report: PreflightReport) -> str:
    mix = report.mix
    shape = f"{mix.samples} sequences packed to {mix.seq_len} tokens" if mix.pack else \
        f"{mix.samples} samples x <= {mix.seq_len} tokens"
    gates = f", score gates {mix.score_gates}" if mix.score_gates else ""
    lines = [f"calibration mix {mix.name}: {shape}, seed {mix.seed}{gates}"]
    for spec, planned in zip(mix.datasets, mix.counts(), strict=True):
        check = next((c for c in report.datasets if c.label == spec.label), None)
        if check is None:
            lines.append(f"  {spec.label:<28} {planned:>5} samples  (not read) {source_label(spec)}")
        else:
            per = "packed" if mix.pack else f"~{check.mean_tokens:.0f} tok/sample"
            lines.append(f"  {check.label:<28} {planned:>5} samples  {per:>16}  ({check.rows_checked} rows checked "
                         f"in {check.seconds:.1f} s) {check.source}")
    measured = "" if report.total_tokens == mix.max_tokens else f" (at most {mix.max_tokens})"
    lines.append(f"~{report.total_tokens} tokens{measured}; estimated cost (preflight took {report.seconds:.1f} s):")
    lines.extend(render_cost(report.cost, report.scratch_dir, report.scratch_free))
    lines.extend(note if note.startswith("warning:") else f"note: {note}" for note in report.notes)
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
    """Draw, render and tokenize every sample of the mix (seeded).

    A sample is one row cut at ``seq_len`` tokens, or, for a packed mix, rows laid end to end
    until ``seq_len`` tokens are filled (the row that overflows is cut, the next sequence starts
    with a fresh row; a dataset that runs out leaves its last sequence shorter).
    """
    tokenizer = load_tokenizer(model_dir)
    samples: list[list[int]] = []
    per_dataset: dict[str, int] = {}
    for spec, wanted in zip(mix.datasets, mix.counts(), strict=True):
        taken = 0
        packed: list[int] = []
        for index, row in enumerate(iter_rows(spec, mix, shuffle=True)):
            if taken >= wanted:
                break
            conversation = convert_row(spec, row, index)
            try:
                text = render(conversation, tokenizer)
            except SchemaError as exc:
                raise UserError(f"calibration dataset {spec.label!r} row {index}: {exc}") from exc
            ids = tokenize(text, conversation, tokenizer)
            if mix.pack:
                packed.extend(ids[: mix.seq_len - len(packed)])
                if len(packed) < mix.seq_len:
                    continue
                ids, packed = packed, []
            ids = ids[: mix.seq_len]
            if len(ids) >= 2:
                samples.append(ids)
                taken += 1
        if taken < wanted and len(packed) >= 2:
            samples.append(packed)
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
