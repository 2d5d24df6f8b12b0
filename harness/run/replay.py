"""Ask a finished run's items again on another server: the base, served on a bigger machine.

``bench gate RUN --baseline URL`` needs a base run paired item by item with RUN, and its user
compresses because the base does not fit here. So the base is asked at the endpoint exactly as
the candidate was asked: the same packs, tier, limit, repeats and seed, and each pack's sampling
as the candidate's manifest records it was sent (its answer and thinking budgets included, so
the pair differs in the model and nothing else). The run lands in a folder named by the endpoint,
the served name and those options: a second candidate gated against the same base reuses it, and
a killed one resumes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.client import normalize_endpoint
from bench.errors import UserError
from bench.records import PackEntry
from bench.run.evaluation import execute, options_from_run
from bench.run.options import RunOptions
from bench.run.store import MANIFEST, RunStore

Echo = Callable[[str], object]


def pack_sampling_as_sent(entry: PackEntry) -> dict[str, Any]:
    """One pack's sampling as the run sent it, as ``pack_sampling`` overrides another run can take."""
    sent = entry.sampling
    budget = entry.budget or {}
    chosen: dict[str, Any] = {key: sent[key] for key in ("temperature", "top_p", "top_k") if sent.get(key) is not None}
    if "thinking" in sent:
        chosen["thinking"] = bool(sent["thinking"])
    answer = budget.get("answer_tokens") or sent.get("max_tokens")
    if answer:
        chosen["max_tokens"] = int(answer)
    if budget.get("thinking_tokens"):
        chosen["thinking_budget"] = int(budget["thinking_tokens"])
    return chosen


def replay_options(run_dir: Path, endpoint: str, served_model_name: str | None, runs_dir: Path) -> RunOptions:
    """The options that ask ``run_dir``'s items at ``endpoint``, in a folder under ``runs_dir`` named for them."""
    manifest = RunStore.open(run_dir).read_manifest()
    options = options_from_run(run_dir)
    sampling = {entry.name: pack_sampling_as_sent(entry) for entry in manifest.packs}
    evaluate = options.evaluate.model_copy(update={
        "packs": ",".join(entry.name for entry in manifest.packs), "pack_sampling": sampling,
        "limit": manifest.limit, "repeats": manifest.repeats, "seed": manifest.seed,
    })
    url = normalize_endpoint(endpoint)
    identity = {"endpoint": url, "model": served_model_name,
                "evaluate": evaluate.model_dump(mode="json", exclude={"concurrency", "request_timeout_s"})}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    where = urlsplit(url)
    name = "-".join(part for part in ("base", where.hostname or "endpoint", str(where.port or ""),
                                      served_model_name or "", digest) if part)
    return RunOptions(endpoints=[url], served_model_name=served_model_name, serve=options.serve, evaluate=evaluate,
                      runs_dir=str(runs_dir), run_id=re.sub(r"[^A-Za-z0-9._-]+", "-", name))


def replay_at_endpoint(run_dir: Path, endpoint: str, served_model_name: str | None, *, runs_dir: Path | None = None,
                       echo: Echo = print) -> Path:
    """The base's run at ``endpoint``, paired with ``run_dir``: reused when finished, resumed when cut off."""
    if not (run_dir / MANIFEST).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {MANIFEST})")
    options = replay_options(run_dir, endpoint, served_model_name, runs_dir or run_dir.parent)
    assert options.run_id is not None
    folder = Path(options.runs_dir) / options.run_id
    if folder.is_dir() and (folder / MANIFEST).is_file():
        if RunStore.open(folder).finished_results() is not None:
            echo(f"baseline: {folder} already holds the base's answers from {options.endpoints[0]}")
            return folder
        echo(f"baseline: resuming {folder} at {options.endpoints[0]}")
        outcome = execute(options, resume_dir=folder, echo=echo)
    else:
        echo(f"baseline: asking {run_dir}'s items at {options.endpoints[0]} -> {folder}")
        outcome = execute(options, echo=echo)
    if not outcome.results.complete:
        raise UserError(f"the base's run {outcome.run_dir} finished with {outcome.results.missing_items} item(s) "
                        "missing: rerun the same bench gate to resume it")
    return Path(outcome.run_dir)
