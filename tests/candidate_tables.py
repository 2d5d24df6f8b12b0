"""Candidate summaries and pruning records for report tests, built without the engine.

The summary goes through the loop's own model (``bench.candidate.summary.Summary``) and its own
Pareto front, so a test compares the page against what ``bench candidate`` would have written.
``write_pruning`` writes a record shaped like ``bench.engine.compute.prune``'s, for tests that must not
need torch; the engine-marked tests use a real one.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.candidate import Summary, pareto_front
from bench.candidate.summary import Row, Steps, report_table
from bench.report.candidates import CandidateTable

HOSTILE_LABEL = "<b>k2</b><script>alert(1)</script> $\\frac{$"  # markup, and TeX that matplotlib cannot parse


def sample_summary(runs: dict[str, Path] | None = None, pruning: dict[str, Path] | None = None) -> Summary:
    """Base and four candidates: two on the front, one dominated, one that failed before running."""
    runs, pruning = runs or {}, pruning or {}
    specs = [  # label, kept, size, toolcall, mmlu, verdict
        ("base", 8, 1000, 0.90, 0.70, None),
        ("mix-k6", 6, 760, 0.88, 0.70, "Pass"),
        ("mix-k4", 4, 520, 0.70, 0.60, "FailToolcall"),
        (HOSTILE_LABEL, 4, 530, 0.60, 0.55, "FailToolcall"),  # dominated by mix-k4
    ]
    rows = [
        Row(label=label, role="base" if label == "base" else "candidate", experts_kept=kept, experts_total=8,
            precision="bf16" if label == "base" else "fp8", size_bytes=size, size_ratio=size / 1000,
            scores={"toolcall": tool, "mmlu": mmlu}, mean_score=(tool + mmlu) / 2, valid=True, verdict=verdict,
            verdict_line=f"{verdict}: planted" if verdict else None, origin=None if label == "base" else "ratio",
            run_dir=str(runs[label]) if label in runs else None,
            pruning=str(pruning[label]) if label in pruning else None)
        for label, kept, size, tool, mmlu, verdict in specs
    ]
    rows.append(Row(label="mix-k2", role="candidate", experts_kept=2, experts_total=8, precision="fp8",
                    error="vLLM exited with code 1", pruning=str(pruning["mix-k2"]) if "mix-k2" in pruning else None))
    front = pareto_front({r.label: (r.size_bytes, r.mean_score) for r in rows
                          if r.size_bytes is not None and r.mean_score is not None})
    for row in rows:
        row.pareto = row.label in front
    return Summary(name="sweep", plan="plan.yaml", base="/models/base", out="/out", created_at="now",
                   bench_version="0", packs=["toolcall", "mmlu"], gate_spec="default.yaml", rows=rows, pareto=front,
                   steps=Steps(ran=0, cached=0, resumed=0, failed=["mix-k2"]))


def sample_table(**kwargs: dict[str, Path]) -> CandidateTable:
    return report_table(sample_summary(**kwargs))


def write_pruning(folder: Path, *, layers: int = 3, experts: int = 8, keep: int = 4) -> Path:
    """A ``pruning.json`` like the engine's: the ``keep`` highest scores of each layer kept."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for layer in range(layers):
        scores = [round(((layer + 1) * 7 + expert * 5) % 11 / 10 + 0.01 * expert, 6) for expert in range(experts)]
        counts = [float((expert * 3 + layer) % 7 * 10) for expert in range(experts)]
        kept = sorted(sorted(range(experts), key=lambda e: -scores[e])[:keep])
        records.append({"layer": layer, "kept": kept, "scores": scores, "reap": scores, "frequency": counts,
                        "usage": [c / 100 for c in counts], "mean_gate": scores})
    record = {"version": 1, "base_model": "/models/base", "family": "qwen3_moe", "criterion": "reap",
              "selection": "per-layer", "n_experts_before": experts, "n_experts_after": keep, "layers": records}
    path = folder / "pruning.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
