"""What a plan's candidates are gated against: the base served here, a stored baseline or run
directory, or an endpoint serving the base elsewhere.

Users compress because the base does not fit their GPU, so the loop must be able to gate without
serving it: run the base once where it fits, save it (``bench baseline save``), carry the folder.
A stored baseline is checked here, before any pruning, against the packs the plan will run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.client import normalize_endpoint
from bench.compare.baselines import resolve_run
from bench.errors import UserError
from bench.records import Manifest
from bench.run.store import ITEMS, MANIFEST, RESULTS

Kind = Literal["served", "stored", "endpoint"]


@dataclass(frozen=True)
class BaselineSource:
    kind: Kind
    run_dir: Path | None = None  # stored: the baseline's folder (a run directory)
    url: str | None = None  # endpoint: its /v1 base URL
    model: str | None = None  # endpoint: the served name of the base, if the plan names it

    def describe(self) -> str:
        if self.kind == "stored":
            return f"stored baseline {self.run_dir} (the base is not served)"
        if self.kind == "endpoint":
            return f"the base at {self.url}" + (f" ({self.model})" if self.model else "") + " (not launched here)"
        return "the base, served here"

    def files(self) -> list[Path]:
        """The stored files whose bytes the gate reads (they key the gate steps)."""
        assert self.run_dir is not None
        return [self.run_dir / name for name in (MANIFEST, RESULTS, ITEMS)]


def resolve_baseline(reference: str | None, model: str | None, plan_path: Path, packs: list[str],
                     tier: str, limit: int | None, repeats: int) -> BaselineSource:
    """The plan's ``baseline:`` resolved and, for a stored one, checked against what the plan asks."""
    if reference is None:
        return BaselineSource("served")
    if reference.startswith(("http://", "https://")):
        return BaselineSource("endpoint", url=normalize_endpoint(reference), model=model)
    relative = Path(reference).expanduser()
    local = relative if relative.is_absolute() else plan_path.parent / relative
    run_dir = local if local.is_dir() else resolve_run(reference)
    source = BaselineSource("stored", run_dir=run_dir.resolve())
    missing = [path.name for path in source.files() if not path.is_file()]
    if missing:
        raise UserError(f"baseline {run_dir} lacks {', '.join(missing)}: save a finished run with bench baseline save")
    try:
        manifest = Manifest.model_validate_json((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"baseline {run_dir}: {MANIFEST} is not a bench manifest ({str(exc).splitlines()[0]})") from exc
    ran = {entry.name: entry for entry in manifest.packs}
    absent = [name for name in packs if name not in ran]
    if absent:
        raise UserError(f"baseline {run_dir} did not run pack(s) {', '.join(absent)}: run and save a base with "
                        f"--packs {','.join(packs)}, or drop them from the plan")
    tiers = {ran[name].tier for name in packs}
    if tiers != {tier}:
        raise UserError(f"baseline {run_dir} ran tier {', '.join(sorted(tiers))} and the plan asks tier {tier}: "
                        "candidates are paired item by item, so both must ask the same items")
    if manifest.limit != limit or manifest.repeats != repeats:
        raise UserError(f"baseline {run_dir} ran limit={manifest.limit}, repeats={manifest.repeats} and the plan asks "
                        f"limit={limit}, repeats={repeats}: both must ask the same items the same number of times")
    return source
