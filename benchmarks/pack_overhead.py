"""The harness's own work per item for every pack, with no model in the loop.

For each pack, replays each item's stored reference reply through what the runner does after a
response arrives: the pack's scorer, the health scan, building the record and the schema-validated
append to items.jsonl. Prints milliseconds per item (min/median/max over rounds); packs that run
code (bugfind, code) spend their time in the sandbox, which is scoring, not overhead.

    BENCH_DATA_DIR=../shared/data .venv/bin/python benchmarks/pack_overhead.py [--items 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import registry
from bench.records import ItemRecord
from bench.run.runner import score_safely
from bench.run.store import RunStore
from bench.serve.health import scan_transcript
from bench.testing import transcript_for_answer

PACKS = ("toolcall", "bugfind", "dataextract", "instructfollow", "code", "mmlu")


def replay(pack_name: str, n: int, run_dir: Path) -> tuple[float, float]:
    """Seconds per item for (scoring, everything else the runner does after the reply)."""
    pack = registry.load(pack_name)
    items = [item for item in pack.items("full") if item.reference is not None][:n]
    transcripts = [transcript_for_answer(item.reference) for item in items]  # type: ignore[arg-type]
    store = RunStore(run_dir)
    scoring = rest = 0.0
    for item, transcript in zip(items, transcripts):
        started = time.perf_counter()
        score = score_safely(pack, item, transcript)
        scored = time.perf_counter()
        record = ItemRecord(pack=pack.name, pack_version=pack.version, item_id=item.id, transcript=transcript,
                            score=score, flags=scan_transcript(transcript), started_at="", finished_at="", elapsed_s=0.0)
        store.append_item(record)
        rest += time.perf_counter() - scored
        scoring += scored - started
    return scoring / len(items), rest / len(items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--packs", default=",".join(PACKS))
    args = parser.parse_args()
    print(f"{'pack':<16}{'score ms/item (min/med/max)':>32}{'record+scan+append ms/item':>32}")
    for name in args.packs.split(","):
        scores, rests = [], []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                s, r = replay(name, args.items, Path(tmp))
            scores.append(s * 1000)
            rests.append(r * 1000)
        fmt = lambda xs: f"{min(xs):.2f}/{statistics.median(xs):.2f}/{max(xs):.2f}"  # noqa: E731
        print(f"{name:<16}{fmt(scores):>32}{fmt(rests):>32}")


if __name__ == "__main__":
    main()
