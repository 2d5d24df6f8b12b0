"""A finished run directory read for comparison: manifest, results and per-item scores.

The gate and the report need every item's score (to pair runs item by item) but only a few
items' transcripts (the drill-down). Validating 10,000 full transcripts costs seconds, so items
are read through a narrow view holding just the scored fields; full records are parsed only for
the items a report shows. manifest.json and results.json go through the store's schema checks,
and items.jsonl through the store's :func:`~bench.run.store.read_effective`, so a resumed item's
stale error record never counts; a run whose records changed since results.json was written is
refused with the fix.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from bench import passk, stats
from bench.errors import UserError
from bench.pack import Score
from bench.records import Flags, ItemRecord, Manifest, PackEntry, Results
from bench.run.lock import live_owner
from bench.run.store import ITEMS, RESULTS, EffectiveItems, RunStore, check_schema_version, read_effective

# An item whose request failed counts as a zero, as in results.json (bench.run.aggregate).
UNSCORED_VALUE = 0.0
OVERALL_MEASURES = ("score", "pass_rate", "pass_hat_k")
PASS_HAT_K = "pass_hat_k"  # per item: C(c, k) / C(n, k) of its k trials (bench.passk), not a trial mean


class ScoredItem(BaseModel):
    """The fields of one items.jsonl line that scoring comparisons read."""

    model_config = ConfigDict(extra="ignore")
    schema_version: int | None = None
    line: int = 0  # line number in items.jsonl, to fetch the full record later without a rescan
    pack: str
    item_id: str
    repeat: int = 0
    seed: int | None = None
    score: Score | None = None
    error: str | None = None
    flags: Flags = Flags()
    elapsed_s: float = 0.0

    def value(self, measure: str) -> float | None:
        """The item's value for ``score``, ``pass_rate`` or a subdimension (None: not applicable)."""
        if self.score is not None and self.score.status == "unmeasured":
            return None  # not measured on this server: no value, not a zero (bench.pack.ScoreStatus)
        if measure == "score":
            return self.score.value if self.score else UNSCORED_VALUE
        if measure == "pass_rate":
            return float(self.score.passed) if self.score else UNSCORED_VALUE
        return self.score.subscores.get(measure) if self.score else None


@dataclass
class RunData:
    """One run directory, loaded."""

    path: Path
    manifest: Manifest
    results: Results
    items: list[ScoredItem] = field(default_factory=list)
    has_items: bool = False
    _folded_cache: dict[tuple[str, str], stats.FoldedScores] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.results.run_id

    @cached_property
    def _by_pack(self) -> dict[str, list[ScoredItem]]:
        grouped: dict[str, list[ScoredItem]] = defaultdict(list)
        for item in self.items:
            grouped[item.pack].append(item)
        return grouped

    def pack_items(self, pack: str) -> list[ScoredItem]:
        return self._by_pack.get(pack, [])

    def pack_entry(self, pack: str) -> PackEntry | None:
        """The manifest's entry for ``pack``, if the run asked it."""
        return next((entry for entry in self.manifest.packs if entry.name == pack), None)

    def pack_identity(self, pack: str) -> tuple[str, str]:
        """The pack's (version, data sha256) as the manifest records them ("?" where it does not)."""
        entry = self.pack_entry(pack)
        if entry is not None:
            return entry.version, entry.data_hash
        result = self.results.packs.get(pack)
        return (result.version if result else "?"), "?"

    def trials(self, pack: str) -> dict[str, list[bool | None]]:
        """item id -> its trials' pass/fail in repeat order (None: the request failed, nothing scored)."""
        found: dict[str, list[tuple[int, bool | None]]] = defaultdict(list)
        for item in self.pack_items(pack):
            scored = item.score is not None and item.error is None and item.score.status != "unmeasured"
            found[item.item_id].append((item.repeat, item.score.passed if item.score and scored else None))
        return {item_id: [outcome for _, outcome in sorted(pairs, key=lambda pair: pair[0])]
                for item_id, pairs in found.items()}

    def trials_per_item(self, pack: str) -> int:
        """The pack's k: trials each item was asked (``--repeats``), as its records show it."""
        return passk.trials_asked(item.repeat for item in self.pack_items(pack))

    def folded(self, pack: str, measure: str) -> stats.FoldedScores:
        """Per-item values of one measure, repeats averaged (see :func:`bench.stats.fold_repeats`).

        ``pass_hat_k`` is the exception: each item's k trials give one all-pass value (items with
        fewer than k scored trials are left out), so pairing compares all-pass with all-pass.
        """
        key = (pack, measure)
        if measure == PASS_HAT_K and key not in self._folded_cache:
            outcomes = {item_id: [t for t in trials if t is not None] for item_id, trials in self.trials(pack).items()}
            values = passk.per_item(outcomes, self.trials_per_item(pack))
            self._folded_cache[key] = stats.FoldedScores(
                values=values, repeats={item_id: len(outcomes[item_id]) for item_id in values}, spread=None)
        if key not in self._folded_cache:
            pairs = ((item.item_id, item.value(measure)) for item in self.pack_items(pack))
            self._folded_cache[key] = stats.fold_repeats((i, v) for i, v in pairs if v is not None)
        return self._folded_cache[key]

    def full_records(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[ItemRecord]]:
        """Full records (transcripts included) of the (pack, item_id) pairs asked for, by repeat."""
        wanted_set = set(wanted)
        found: dict[tuple[str, str], list[ItemRecord]] = defaultdict(list)
        if not wanted_set or not self.has_items:
            return found
        numbers = {item.line: (item.pack, item.item_id) for item in self.items if (item.pack, item.item_id) in wanted_set}
        for lineno, line in _lines(self.path / ITEMS):
            if lineno in numbers:
                found[numbers[lineno]].append(ItemRecord.model_validate_json(line))
        for records in found.values():
            records.sort(key=lambda record: record.repeat)
        return found


def different_items(runs: Mapping[str, RunData], pack: str) -> str:
    """Why runs (by label) cannot be paired on ``pack``: other versions or data files; "" when they can."""
    seen = {label: run.pack_identity(pack) for label, run in runs.items()}
    if len(set(seen.values())) <= 1:
        return ""
    described = "; ".join(f"{label}: version {version}, data sha256 {digest[:12]}"
                          for label, (version, digest) in seen.items())
    return f"the runs asked different items ({described})"


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        lines = handle.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.endswith("\n") and lineno == len(lines):
            break  # a torn final write from a killed run, as the store skips it
        yield lineno, line


def _peek_version(line: str) -> object:
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    return data.get("schema_version") if isinstance(data, dict) else None


def _parse_view(line: str, path: Path, lineno: int) -> ScoredItem:
    where = f"{path}:{lineno}"
    try:
        view = ScoredItem.model_validate_json(line)
    except ValidationError as exc:
        check_schema_version(_peek_version(line), where)  # a newer layout is named as such, not as a bad field
        first = exc.errors()[0]
        field_name = ".".join(str(part) for part in first["loc"]) or "(line)"
        raise UserError(f"{where}: field {field_name}: {first['msg']}") from exc
    check_schema_version(view.schema_version, where)
    view.line = lineno
    return view


def _check_complete(path: Path, results: Results, items: EffectiveItems[ScoredItem]) -> None:
    """results.json must describe the items.jsonl beside it: a lost, added or edited record is refused."""
    if results.items_sha256 is None:
        return  # written before results recorded their items: nothing to compare with
    recorded, now = results.item_records or {}, items.digest.per_pack
    if recorded == now and results.items_sha256 == items.digest.sha256:
        return
    owner = live_owner(path)
    if owner is not None:
        raise UserError(f"{path} is being written by {owner.describe()}: wait for it to finish")
    counts = [f"{pack} {recorded.get(pack, 0)} -> {now.get(pack, 0)}" for pack in sorted(set(recorded) | set(now))
              if recorded.get(pack, 0) != now.get(pack, 0)]
    what = f"records per pack changed ({', '.join(counts)})" if counts else "records changed"
    raise UserError(f"{path / ITEMS} no longer matches {RESULTS}: {what} since it was aggregated; "
                    f"run: bench rescore {path}")


def load_run(path: Path, *, with_items: bool = True) -> RunData:
    """Read a run (or stored baseline) directory; a missing or broken file is a UserError."""
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: pass a run directory (with manifest.json and results.json)")
    store = RunStore.open(path)
    if not store.has_results():
        raise UserError(f"{path} has no {RESULTS}: the run has not finished; resume it or rescore it first")
    run = RunData(path=path, manifest=store.read_manifest(), results=store.read_results())
    items_path = path / ITEMS
    if with_items and items_path.is_file():
        items = read_effective(items_path, lambda line, lineno: _parse_view(line, items_path, lineno))
        _check_complete(path, run.results, items)
        run.items = items.records
        run.has_items = True
    return run
