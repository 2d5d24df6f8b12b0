"""``bench quantize`` against llm-compressor's model-free path, on the same checkpoint.

llm-compressor's ``model_free_ptq`` is the field's reference for data-free FP8 straight from
safetensors (no model class, no calibration). This script runs both on one bf16 checkpoint
(default: the synthetic Qwen3-MoE with Qwen3-30B-A3B's expert shapes that ``benchmarks/engine.py``
builds) and prints, side by side:

- wall time of the conversion (each timed around the call only, after its imports);
- output bytes, and which tensors each one quantized;
- per quantized tensor: the relative error of the dequantized weight against the original
  (Frobenius norms), the share of FP8 codes the two agree on, and the scale dtypes.

llm-compressor is not a dependency of bench: give an interpreter that has it, e.g.
``python -m venv /tmp/lc && /tmp/lc/bin/pip install llmcompressor``.

    .venv/bin/python benchmarks/quantize_reference.py --reference-python /tmp/lc/bin/python [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

# Run in the reference interpreter: only the conversion is timed.
REFERENCE_RUN = """
import json, sys, time
from llmcompressor import model_free_ptq
model, out, ignore, workers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
started = time.perf_counter()
model_free_ptq(model_stub=model, save_directory=out, scheme="FP8_DYNAMIC", ignore=ignore,
               max_workers=workers, device="cpu")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def weight_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def reference_convert(python: str, model: Path, out: Path, ignore: list[str], workers: int) -> float:
    """Seconds llm-compressor's ``model_free_ptq`` took on ``model`` (run in ``python``)."""
    done = subprocess.run([python, "-c", REFERENCE_RUN, str(model), str(out), json.dumps(ignore), str(workers)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"llm-compressor run failed ({python}): {tail[0]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def compare(model: Path, ours: Path, theirs: Path) -> dict[str, object]:
    """Errors and agreement of the two outputs, over the tensors both quantized."""
    import torch
    from safetensors import safe_open

    from bench.engine.compute.fp8 import fp8_to_float32

    def opened(directory: Path) -> dict[str, object]:
        handles = {}
        for path in directory.glob("*.safetensors"):
            handle = safe_open(str(path), framework="pt")
            handles.update({name: handle for name in handle.keys()})
        return handles

    source, mine, reference = opened(model), opened(ours), opened(theirs)

    def quantized(handles: dict[str, object]) -> set[str]:
        return {name.removesuffix("_scale") for name in handles if name.endswith(".weight_scale")}

    both = sorted(quantized(mine) & quantized(reference))
    errors: dict[str, list[float]] = {"ours": [], "reference": []}
    agree, scale_dtypes = [], set()
    for name in both:
        original = source[name].get_tensor(name).to(torch.float32)  # type: ignore[attr-defined]
        codes = {}
        for label, handles in (("ours", mine), ("reference", reference)):
            q = handles[name].get_tensor(name)  # type: ignore[attr-defined]
            scale = handles[name].get_tensor(f"{name}_scale")  # type: ignore[attr-defined]
            scale_dtypes.add(f"{label} {str(scale.dtype).removeprefix('torch.')}")
            restored = fp8_to_float32(q) * scale.to(torch.float32)
            errors[label].append(float((restored - original).norm() / original.norm().clamp_min(1e-30)))
            codes[label] = q.view(torch.uint8)
        agree.append(float((codes["ours"] == codes["reference"]).float().mean()))
    return {
        "tensors": len(both),
        "only_ours": sorted(quantized(mine) - quantized(reference)),
        "only_reference": sorted(quantized(reference) - quantized(mine)),
        "errors": errors,
        "agree": agree,
        "scale_dtypes": sorted(scale_dtypes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reference-python", required=True, help="an interpreter with llmcompressor installed")
    parser.add_argument("--model", type=Path, help="a bf16 checkpoint (default: synthetic, Qwen3-30B-A3B expert shapes)")
    parser.add_argument("--workers", type=int, default=2, help="llm-compressor's max_workers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which(args.reference_python) is None and not Path(args.reference_python).exists():
        print(f"no interpreter at {args.reference_python}")
        return 2

    from bench.engine.compute.fp8 import quantize_checkpoint
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.fp8_plan import plan_quantization

    work = Path(tempfile.mkdtemp(prefix="quantize-reference-"))
    try:
        if args.model:
            model = args.model
        else:
            from engine import REAL_SHAPES, build_synthetic

            model = build_synthetic(work / "model", REAL_SHAPES["layers"], REAL_SHAPES["experts"],
                                    REAL_SHAPES["hidden"], REAL_SHAPES["expert_size"])
        # The reference is told to keep what bench keeps (its ignore list, as compressed-tensors writes it).
        ignore = plan_quantization(Checkpoint.open(model)).ignore
        quantize_checkpoint(model, work / "ours")  # one-time costs (imports, kernel load) out of the timed runs
        ours_s, theirs_s = [], []
        for _ in range(args.repeats):
            shutil.rmtree(work / "ours", ignore_errors=True)
            ours_s.append(quantize_checkpoint(model, work / "ours").seconds)
            shutil.rmtree(work / "theirs", ignore_errors=True)
            theirs_s.append(reference_convert(args.reference_python, model, work / "theirs", ignore, args.workers))
        result = compare(model, work / "ours", work / "theirs")
        errors, agree = result["errors"], result["agree"]
        assert isinstance(errors, dict) and isinstance(agree, list)
        print(f"checkpoint {model}: {weight_bytes(model) / 2**30:.3f} GiB bf16; {result['tensors']} tensors quantized by both")
        print(f"only bench quantized: {result['only_ours'] or 'none'}; only the reference: {result['only_reference'] or 'none'}")
        print(f"scale dtypes: {', '.join(result['scale_dtypes'])}\n")
        rows = [
            ("conversion seconds (median of runs)", statistics.median(ours_s), statistics.median(theirs_s), ".2f"),
            ("output GiB", weight_bytes(work / "ours") / 2**30, weight_bytes(work / "theirs") / 2**30, ".3f"),
            ("relative error, mean over tensors", statistics.fmean(errors["ours"]), statistics.fmean(errors["reference"]),
             ".5f"),
            ("relative error, worst tensor", max(errors["ours"]), max(errors["reference"]), ".5f"),
        ]
        print(f"{'':<36} {'bench':>10} {'llm-compressor':>15}")
        for name, mine, theirs, spec in rows:
            print(f"{name:<36} {mine:>10{spec}} {theirs:>15{spec}}")
        print(f"\nruns: bench {'/'.join(f'{s:.2f}' for s in ours_s)} s; llm-compressor "
              f"{'/'.join(f'{s:.2f}' for s in theirs_s)} s (max_workers {args.workers})")
        print(f"FP8 codes identical in both: {statistics.fmean(agree):.2%} on average, {min(agree):.2%} in the worst tensor")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
