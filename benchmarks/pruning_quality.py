"""Pruning quality on the real-language MoE: held-out loss after each criterion's pruning.

Builds (or reuses) the SmolLM2 MoE (``bench toy --kind smollm-moe``), scores its experts once on
calibration text (MMLU test questions, by default none of those the MoE's build fitted on), then
measures next-token loss on held-out text (MMLU dev questions, never used to build or calibrate)
with only the kept experts routable, for REAP, frequency, mean gate weight, EAN, the inverse of REAP
(keeps the least salient experts) and several random selections, at each compression ratio. Prints
one table; lower loss is better. Each criterion's loss is also compared with REAP's question by
question on the same held-out tokens: the difference (positive means REAP is better) with its
standard error over questions, so a gap smaller than the held-out text can resolve reads as such;
the spread of the random selections' losses says how far a single random choice strays from their
mean. A yardstick comes first: how far the unpruned model's loss moves when every routed expert's
output is scaled by 0.9 or 1.1: a gap between criteria no larger than the loss's response to so
small a uniform change says little about the criteria.

``--experts exact`` builds the MoE the engine tests rank criteria on instead (exact experts from
four importance bands, a quarter of each MLP always on; ``--build-seed`` seeds its clustering).

    python benchmarks/pruning_quality.py [--model DIR | --experts refit|exact --build-seed 0]
        [--data-dir ../shared/data] [--seeds 5] [--samples 128] [--held-out 285] [--calibration-seed 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

CRITERIA = ("reap", "frequency", "mean-gate", "ean")


def mix_file(path: Path, data_dir: Path, split: str, seed: int, samples: int) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "name": path.stem, "seq_len": 256, "samples": samples, "seed": seed,
        "datasets": [{"adapter": "mmlu", "count": samples,
                      "data_files": str(data_dir / "mmlu" / f"mmlu_all_{split}.parquet")}],
    }))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a MoE checkpoint (default: build the SmolLM2 MoE)")
    parser.add_argument("--experts", choices=("refit", "exact"), default="refit",
                        help="which SmolLM2 MoE to build without --model: the default, or the engine tests' exact one")
    parser.add_argument("--build-seed", type=int, default=0, help="seed of that build's clustering")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BENCH_DATA_DIR", "../shared/data")))
    parser.add_argument("--seeds", type=int, default=5, help="random selections per ratio")
    parser.add_argument("--samples", type=int, default=128, help="calibration questions (MMLU test)")
    parser.add_argument("--held-out", type=int, default=285, help="held-out questions (MMLU dev has 285)")
    parser.add_argument("--ratios", default="0.25,0.5")
    # Seed 0 draws the MMLU test questions the SmolLM2 MoE's own build fitted on (24 of 64); seed 1 none.
    parser.add_argument("--calibration-seed", type=int, default=1, help="seed drawing the calibration questions")
    args = parser.parse_args()

    import torch

    from bench.engine.compute.reap import score_experts
    from bench.engine.planning.calibration import build_samples, load_mix
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.moe import resolve
    from bench.engine.planning.prune_plan import PruneOptions
    from bench.engine.toys.builders import build_smollm
    from bench.engine.toys.smollm_moe import RANKING_BUILD, LossMeter, build_smollm_moe, loss_gap

    work = Path(tempfile.mkdtemp(prefix="pruning-quality-"))
    started = time.perf_counter()
    shape = RANKING_BUILD if args.experts == "exact" else {}
    model = args.model or build_smollm_moe(build_smollm(work / "dense"), work / "smollm-moe", data_dir=args.data_dir,
                                           seed=args.build_seed, progress=None, **shape)
    built = time.perf_counter() - started
    held_out = build_samples(load_mix(mix_file(work / "held.yaml", args.data_dir, "dev", 1, args.held_out)),
                             model).token_ids
    calibration_mix = mix_file(work / "cal.yaml", args.data_dir, "test", args.calibration_seed, args.samples)
    calibration = build_samples(load_mix(calibration_mix), model).token_ids
    checkpoint = Checkpoint.open(model)
    moe = resolve(checkpoint)
    scoring = score_experts(checkpoint, moe, calibration, PruneOptions(keep=1, propagate="unpruned"), keep=1)
    meter = LossMeter(model)
    lengths = [len(ids) - 1 for ids in held_out]
    base_losses = meter.token_losses(held_out).double()
    base = float(base_losses.mean())
    print(f"model {model} ({moe.family.name}, {moe.n_experts} experts, top-{moe.top_k}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}; "
          f"build {built:.0f} s")
    print(f"held-out: {sum(lengths)} tokens in {len(held_out)} questions; "
          f"calibration: {sum(len(t) for t in calibration)} tokens in {len(calibration)} questions")
    print(f"unpruned loss {base:.4f}")
    for scale in (0.9, 1.1):
        gap, error = loss_gap(meter.token_losses(held_out, routed_scale=scale).double(), base_losses, lengths)
        print(f"yardstick: every routed output x{scale}: loss {gap:+.4f} ± {error:.4f} against unpruned")
    print()

    def losses(criterion: str, keep: int, seed: int = 0, invert: bool = False) -> torch.Tensor:
        return meter.selection_losses(held_out, scoring, criterion, keep, seed=seed, invert=invert).double()

    def versus(other: torch.Tensor, reap: torch.Tensor) -> str:
        gap, error = loss_gap(other, reap, lengths)
        return f"{gap:+.4f} ± {error:.4f}"

    print("| compression | keep | selection | held-out loss | minus REAP ± s.e. |")
    print("|---|---|---|---|---|")
    for ratio in (float(r) for r in args.ratios.split(",")):
        keep = max(moe.top_k, round(moe.n_experts * (1 - ratio)))
        rows = {criterion: losses(criterion, keep) for criterion in CRITERIA}
        rows["inverse REAP"] = losses("reap", keep, invert=True)
        randoms = [losses("random", keep, seed) for seed in range(args.seeds)]
        for seed, values in enumerate(randoms):
            rows[f"random seed {seed}"] = values
        rows["random, mean of seeds"] = torch.stack(randoms).mean(0)
        for name, values in rows.items():
            gap = "" if name == "reap" else versus(values, rows["reap"])
            print(f"| {ratio:.2f} | {keep} | {name} | {float(values.mean()):.4f} | {gap} |", flush=True)
        if len(randoms) > 1:  # how far one random selection strays: often wider than the question error
            spread = float(torch.stack([values.mean() for values in randoms]).std())
            print(f"| {ratio:.2f} | {keep} | random, s.d. over seeds | ± {spread:.4f} | |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
