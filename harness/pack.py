"""The pack contract: what a pack declares, what it asks, and how it scores.

A pack is data plus one scorer. The core never names a pack: packs are found through the
``bench.packs`` entry point group (see ``bench.registry``) and only ever touched through
this interface. ``score`` is pure: it sees the item and the stored transcript, never the
server, so ``bench rescore`` can re-score a finished run offline.
"""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeVar

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import UserError
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord
    from bench.session import Session

Tier = Literal["quick", "full"]
T = TypeVar("T")
# ``unmeasured``: the pack could not ask what it measures here (a server without guided decoding);
# such a score is left out of every mean and comparison, as a failed request is, but is final.
ScoreStatus = Literal["scored", "truncated", "empty", "error", "unmeasured"]


class Sampling(BaseModel):
    """Sampling a pack asks for by default; CLI flags override and the run records the result."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = 0.0
    max_tokens: int = 512
    top_p: float | None = None
    top_k: int | None = None
    thinking: bool = True
    seed: int | None = None  # set per request by the runner: the run's seed plus the repeat


class Item(BaseModel):
    """One thing to ask. ``data`` is the pack's own payload (prompt, tools, expectations, ...)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    data: dict[str, Any] = Field(default_factory=dict)
    tiers: list[Tier] = Field(default_factory=lambda: list[Tier](["full"]))
    # Reference answers used by the test suite to prove item and scorer agree; never sent to a model.
    reference: dict[str, Any] | None = None
    wrong: list[dict[str, Any]] = Field(default_factory=list)


class Score(BaseModel):
    """The outcome of scoring one item.

    ``value`` is in [0, 1]. ``subscores`` maps a subset of the pack's declared subdimensions
    to values in [0, 1]; a subdimension absent here does not apply to this item (it is not a 0).
    ``status`` says whether the value is a real judgement (``scored``) or the response could not
    be judged on its merits (cut off by length, empty content with reasoning present, an error);
    those are counted apart so that a serving problem never reads as a silent zero.
    """

    model_config = ConfigDict(extra="forbid")
    value: float = Field(ge=0.0, le=1.0)
    passed: bool
    subscores: dict[str, float] = Field(default_factory=dict)
    reason: str = ""
    status: ScoreStatus = "scored"
    extraction: str | None = None  # which answer-extraction rule matched, if any
    details: dict[str, Any] = Field(default_factory=dict)


class NoOptions(BaseModel):
    """The options of a pack that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid")


class Pack(ABC):
    """Base class for every pack. Subclasses set the class attributes and implement the hooks.

    The simplest pack implements ``items``, ``messages`` and ``score``: the default ``run_item``
    sends ``messages(item)`` (with ``tools(item)`` when given) once. Multi-turn packs override
    ``run_item`` and drive the :class:`~bench.session.Session` themselves, answering tool calls
    with their own mock tools.

    ``breakdowns`` names the ways the pack's items group (MMLU: ``subject``, ``category``); the
    harness asks ``groups(item)`` for each item's group in each and aggregates every breakdown
    with intervals, the same way as the overall score. Grouping depends on the item alone, so it
    never changes with the reply and a rescored run groups exactly as the original.

    ``Options`` is the pydantic model of the pack's ``--pack-option`` settings; ``from_options``
    validates the raw strings into it and builds the pack with them as keyword arguments.
    """

    name: str = ""
    version: str = "0"
    description: str = ""
    subdimensions: tuple[str, ...] = ()
    breakdowns: tuple[str, ...] = ()
    default_sampling: Sampling = Sampling()
    Options: ClassVar[type[BaseModel]] = NoOptions

    @abstractmethod
    def items(self, tier: Tier = "full") -> list[Item]:
        """Every item of the tier, in a stable order."""

    def messages(self, item: Item) -> list[dict[str, Any]]:
        """Chat messages for a single-turn item."""
        raise NotImplementedError(f"pack {self.name!r} must implement messages() or run_item()")

    def tools(self, item: Item) -> list[dict[str, Any]] | None:
        """OpenAI ``tools`` for the item, or None."""
        return None

    async def run_item(self, item: Item, session: Session) -> None:
        """Ask the item. The session records every exchange into the transcript."""
        await session.ask(self.messages(item), tools=self.tools(item))

    @abstractmethod
    def score(self, item: Item, transcript: Transcript) -> Score:
        """Judge the transcript. Pure: no I/O to the server."""

    def groups(self, item: Item) -> dict[str, str]:
        """The item's group in each declared breakdown. Default: ``item.data[breakdown]``.

        A breakdown left out here puts the item in the group ``unknown``.
        """
        return {name: str(item.data[name]) for name in self.breakdowns if item.data.get(name) is not None}

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        """Pack-specific figures for results.json that are not breakdowns (e.g. MMLU's dead
        categories, unparseable replies). Default: none."""
        return {}

    def data_files(self) -> list[Path]:
        """Files the items come from; their hash goes into the manifest."""
        return []

    def data_hash(self) -> str:
        """sha256 over the pack's data files, so a result names exactly what was asked."""
        digest = hashlib.sha256()
        for path in sorted(self.data_files()):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    @classmethod
    def from_options(cls, raw: Mapping[str, str]) -> Self:
        """Build the pack from ``--pack-option NAME.KEY=VALUE`` strings, validated by ``Options``."""
        return cls.build(parse_options(cls, raw))

    @classmethod
    def build(cls, options: BaseModel) -> Self:
        """The pack for validated options. Default: the options as constructor keyword arguments."""
        return cls(**options.model_dump())

    def limit(self, items: list[Item], n: int, seed: int) -> list[Item]:
        """The ``n`` items a ``--limit n`` run asks. Default: the first ``n``.

        Packs whose items cluster (MMLU by subject) override this with a seeded, stratified
        choice so that a small limit still covers every stratum.
        """
        return items[:n]

    def item_by_id(self, item_id: str) -> Item | None:
        """Look an item up in the full tier (rescoring needs this)."""
        for item in self.items("full"):
            if item.id == item_id:
                return item
        for item in self.items("quick"):
            if item.id == item_id:
                return item
        return None


def round_robin(groups: Iterable[Sequence[T]], n: int, seed: int) -> list[T]:
    """Up to ``n`` members taken one group at a time, each group in a seeded order: what a pack's
    stratified ``limit`` returns so that a small ``--limit`` still reaches every group."""
    rng = random.Random(seed)
    queues = [rng.sample(list(group), len(group)) for group in groups]
    chosen: list[T] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def describe_options(model: type[BaseModel]) -> str:
    """``shots (int, default 0), ...``: what a user may set, for error lines."""
    parts = []
    for key, info in model.model_fields.items():
        kind = getattr(info.annotation, "__name__", None) or str(info.annotation)
        default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
        parts.append(f"{key} ({kind}, {default})")
    return ", ".join(parts) or "none"


def parse_options(pack: type[Pack], raw: Mapping[str, str]) -> BaseModel:
    """``raw`` validated into ``pack.Options``; an unknown key or a bad value is one UserError line."""
    try:
        return pack.Options.model_validate(dict(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        allowed = describe_options(pack.Options)
        if error["type"] == "extra_forbidden":
            raise UserError(f"pack {pack.name!r} has no option {key!r}; its options: {allowed}") from None
        given = raw.get(key, "")
        raise UserError(
            f"pack {pack.name!r} option {key}={given!r}: {error['msg'].lower()}; its options: {allowed}"
        ) from None


class JsonlPack(Pack):
    """A pack whose items are hand-written: ``items.jsonl`` checked against ``item.schema.json``.

    Both files sit beside the subclass's module and are found through ``importlib.resources``,
    so an installed wheel finds them as a source checkout does. Items load and validate once per
    pack instance; ``check_items`` is the hook for checks a JSON Schema cannot express.
    """

    items_file: ClassVar[str] = "items.jsonl"
    schema_file: ClassVar[str] = "item.schema.json"
    # Files whose bytes name what was asked: they make up the data hash in the manifest.
    hashed_files: ClassVar[tuple[str, ...]] = ("items.jsonl",)

    def __init__(self, data_path: Path | None = None) -> None:
        """``data_path`` replaces the shipped ``items.jsonl`` (tests, a user's own items)."""
        self._data_path = data_path

    @classmethod
    def resource(cls, name: str) -> Traversable:
        """A file shipped in the package that holds the subclass's module."""
        package = cls.__module__.rpartition(".")[0] or cls.__module__
        return resources.files(package).joinpath(name)

    @classmethod
    def item_schema(cls) -> dict[str, Any]:
        schema: dict[str, Any] = json.loads(cls.resource(cls.schema_file).read_text(encoding="utf-8"))
        return schema

    @property
    def items_path(self) -> Path | Traversable:
        return self._data_path or self.resource(self.items_file)

    def check_items(self, items: list[Item]) -> None:
        """Checks across fields or files, after the schema passed. Raise UserError naming the item."""

    @cached_property
    def _all_items(self) -> list[Item]:
        items = load_jsonl_items(self.items_path, self.item_schema())
        self.check_items(items)
        return items

    def items(self, tier: Tier = "full") -> list[Item]:
        return select_tier(self._all_items, tier)

    @cached_property
    def _by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self._all_items}

    def item_by_id(self, item_id: str) -> Item | None:
        return self._by_id.get(item_id)

    def _hashed(self) -> list[Path | Traversable]:
        return [self.items_path if name == self.items_file else self.resource(name) for name in self.hashed_files]

    def data_files(self) -> list[Path]:
        return [Path(str(found)) for found in self._hashed()]

    def data_hash(self) -> str:
        digest = hashlib.sha256()
        for found in sorted(self._hashed(), key=lambda found: found.name):
            digest.update(found.name.encode())
            digest.update(found.read_bytes())
        return digest.hexdigest()


def load_jsonl_items(path: Path | Traversable, schema: dict[str, Any] | None = None) -> list[Item]:
    """Read a pack's items.jsonl, validating each line's ``data`` against ``schema``.

    A broken pack file is a user-facing error naming the file, the line and the field.
    """
    items: list[Item] = []
    seen: set[str] = set()
    # Check the schema once and reuse one validator: jsonschema.validate re-checks the schema
    # against its meta-schema on every call, which dominates the cost for a pack of many lines.
    validator: jsonschema.protocols.Validator | None = None
    if schema is not None:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
        validator = validator_class(schema)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read pack data {path}: {exc.strerror}") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg}: column {exc.colno})") from exc
        try:
            item = Item.model_validate(raw)
        except Exception as exc:  # pydantic's message is long; keep the first line
            first = str(exc).splitlines()
            raise UserError(f"{path}:{lineno}: bad item ({' '.join(first[:3])})") from exc
        if validator is not None:
            error = jsonschema.exceptions.best_match(validator.iter_errors(item.data))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "data"
                raise UserError(f"{path}:{lineno}: item {item.id!r} field {where}: {error.message}")
        if item.id in seen:
            raise UserError(f"{path}:{lineno}: duplicate item id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def select_tier(items: Sequence[Item], tier: Tier) -> list[Item]:
    """Items that belong to ``tier`` (``quick`` items are also in ``full`` unless marked otherwise)."""
    if tier == "full":
        return list(items)
    return [item for item in items if "quick" in item.tiers]


def unscorable(transcript: Transcript) -> Score | None:
    """A zero Score with a non-``scored`` status when the reply cannot be judged on its merits.

    Cut off by ``finish_reason=length`` -> ``truncated``; no content, no tool calls but reasoning
    present -> ``empty`` (the model thought and never answered). Packs call this first so that a
    serving or budget problem is counted as such, not silently scored as a wrong answer.
    """
    last = transcript.last
    if last is None:
        return Score(value=0.0, passed=False, status="error", reason="no response was recorded")
    if transcript.truncated:
        return Score(
            value=0.0,
            passed=False,
            status="truncated",
            reason=f"response cut off at max_tokens ({last.usage.completion_tokens} tokens)",
        )
    if not (last.content or "").strip() and not last.tool_calls:
        if (last.reasoning or "").strip():
            return Score(value=0.0, passed=False, status="empty", reason="empty content; reasoning present")
    return None
