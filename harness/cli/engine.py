"""`bench quantize`, `bench fit`, `bench prune`: the bundled engine's commands (parse, call, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.engine.compute.coverage import DEFAULT_COVERAGE_WARN  # torch-free: bench --help needs no engine
from bench.errors import UserError


def _require_engine() -> None:
    try:
        import safetensors  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise UserError(f"this command needs the engine extra ({exc.name} is missing): pip install 'bench[engine]'") from exc


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        model: Annotated[Path, typer.Option("--model", help="bf16 safetensors checkpoint directory")],
        out: Annotated[Path, typer.Option("--out", help="where to write the FP8 checkpoint")],
        block: Annotated[
            int | None, typer.Option("--block", help="block scales of BLOCKxBLOCK (e.g. 128) instead of per-channel")
        ] = None,
        skip_experts: Annotated[
            bool,
            typer.Option("--skip-experts", help="keep routed experts in bf16 (FP8 attention/dense only; vLLM-CPU)"),
        ] = False,
        keep_fused: Annotated[
            bool, typer.Option("--keep-fused", help="write fused 3D experts fused instead of one tensor per expert")
        ] = False,
        shard_gib: Annotated[float, typer.Option("--shard-gib", help="largest output shard")] = 4.0,
    ) -> None:
        """Write an FP8 (compressed-tensors FP8_DYNAMIC, or FP8_BLOCK with --block) copy of a checkpoint."""
        _require_engine()
        from bench.engine.compute.fp8 import quantize_checkpoint
        from bench.engine.planning.sizes import gib

        result = quantize_checkpoint(
            model, out, block=block, skip_experts=skip_experts, unfuse=not keep_fused,
            max_shard_bytes=int(shard_gib * (1 << 30)),
        )
        print(f"scheme {result.scheme}: {result.quantized} tensors quantized, {result.kept} kept")
        print(
            f"size {gib(result.before_bytes)} -> {gib(result.after_bytes)} "
            f"({result.after_bytes / result.before_bytes:.3f}x) in {result.seconds:.1f} s"
        )
        print(f"worst per-tensor relative error {result.worst_error:.4f} ({result.worst_tensor})")
        print(f"wrote {result.out_dir}")

    @app.command("fit")
    def fit_cmd(
        model: Annotated[Path, typer.Option("--model", help="checkpoint directory (only config and headers are read)")],
        gpu_gib: Annotated[float, typer.Option("--gpu-gib", help="GPU memory in GiB, e.g. 31.84 for a 32 GB card")],
        context: Annotated[int, typer.Option("--context", help="tokens of context per sequence")] = 32768,
        concurrency: Annotated[int, typer.Option("--concurrency", help="sequences served at once")] = 4,
        utilization: Annotated[
            float, typer.Option("--gpu-memory-utilization", help="share of the GPU vLLM may use")
        ] = 0.9,
        overhead_gib: Annotated[
            float, typer.Option("--overhead-gib", help="runtime overhead: activations, CUDA graphs, allocator")
        ] = 1.5,
    ) -> None:
        """Predict served memory at bf16 and FP8 and how many experts per layer fit the GPU."""
        from bench.engine.planning.fit import FitRequest, fit, render_fit

        print(render_fit(fit(FitRequest(model, gpu_gib, context, concurrency, utilization, overhead_gib))))

    @app.command("prune")
    def prune_cmd(
        model: Annotated[Path, typer.Option("--model", help="MoE safetensors checkpoint directory")],
        calibration: Annotated[str, typer.Option("--calibration", help="mix YAML path or a shipped recipe name")],
        out: Annotated[
            Path | None, typer.Option("--out", help="where to write the pruned checkpoint (not needed with "
                                      "--estimate-only or --preflight-only)")
        ] = None,
        compression: Annotated[
            float | None, typer.Option("--compression", help="share of experts to remove per layer, e.g. 0.5")
        ] = None,
        keep: Annotated[int | None, typer.Option("--keep", help="experts to keep per layer")] = None,
        criterion: Annotated[
            str, typer.Option("--criterion", help="reap | frequency | mean-gate | ean | random")
        ] = "reap",
        selection: Annotated[str, typer.Option("--selection", help="per-layer | global")] = "per-layer",
        renormalize: Annotated[
            bool | None,
            typer.Option("--renormalize/--no-renormalize",
                         help="the pruned config's router switch (norm_topk_prob): renormalize top-k weights when "
                         "served; how scoring weighs experts is --score-gates"),
        ] = None,
        score_gates: Annotated[
            str | None,
            typer.Option("--score-gates", help="router | renormalized | raw: the gate weight each expert's output "
                         "norm is scored with (raw: softmax over all experts, REAP's renormalization off); "
                         "default: the mix's, else router"),
        ] = None,
        unpruned_inputs: Annotated[
            bool,
            typer.Option("--unpruned-inputs", help="feed each layer the unpruned model's hidden states"),
        ] = False,
        samples: Annotated[int | None, typer.Option("--samples", help="override the mix's sample count")] = None,
        seq_len: Annotated[int | None, typer.Option("--seq-len", help="override the mix's sequence length")] = None,
        seed: Annotated[int, typer.Option("--seed", help="seed for random pruning and sampling")] = 0,
        device: Annotated[str, typer.Option("--device", help="torch device for scoring (cpu, cuda)")] = "cpu",
        data_dir: Annotated[
            Path | None, typer.Option("--data-dir", help="local data root for mixes ({data_dir}; BENCH_DATA_DIR)")
        ] = None,
        preflight_only: Annotated[
            bool, typer.Option("--preflight-only", help="check the calibration mix and estimate cost, then stop")
        ] = False,
        estimate_only: Annotated[
            bool, typer.Option("--estimate-only", help="estimate time, RAM, scratch disk and device memory from the "
                               "mix's declared counts and the checkpoint's headers (no data read), then stop")
        ] = False,
        scratch_dir: Annotated[
            Path | None, typer.Option("--scratch-dir", help="where scoring keeps the hidden states between layers "
                                      "(default: the system's temporary folder)")
        ] = None,
        allow_stacked: Annotated[
            bool, typer.Option("--allow-stacked", help="prune a checkpoint that was already pruned (its lineage is "
                               "recorded; stacking can lose most of the first calibration's gains)")
        ] = False,
        coverage_warn: Annotated[
            float, typer.Option("--coverage-warn", help="warn when a calibration dataset loses more than this share "
                                "of its router gate mass to dropped experts (default 0.5: most of it; an evenly "
                                "routed model loses about the share of experts dropped, so lower values flag every "
                                "dataset of a 50% prune)")
        ] = DEFAULT_COVERAGE_WARN,
    ) -> None:
        """REAP expert pruning: score experts on calibration text layer by layer, keep the best, write a checkpoint."""
        _require_engine()
        from bench.engine.compute.coverage import check_threshold
        from bench.engine.compute.prune import prune_checkpoint
        from bench.engine.planning.calibration import PREFLIGHT_ROWS, load_mix, preflight, render_preflight
        from bench.engine.planning.prune_plan import PruneOptions

        if not allow_stacked:  # before the calibration preflight, which reads and tokenizes the mix
            from bench.engine.planning.lineage import refuse_stacked

            refuse_stacked(model)
        mix = load_mix(calibration, data_dir=data_dir, samples=samples, seq_len=seq_len, seed=seed)
        options = PruneOptions(
            compression=compression, keep=keep, criterion=criterion, selection=selection,
            renormalize=renormalize, propagate="unpruned" if unpruned_inputs else "pruned", seed=seed,
            device=device, score_gates=score_gates or mix.score_gates,
            scratch_dir=str(scratch_dir) if scratch_dir else None,
        )
        options.validate()  # a mistyped option fails before the preflight reads any data
        check_threshold(coverage_warn)
        if out is None and not (estimate_only or preflight_only):
            raise UserError("bench prune needs --out (where to write the pruned checkpoint); only --estimate-only "
                            "and --preflight-only run without it")
        report = preflight(mix, model, rows=0 if estimate_only else PREFLIGHT_ROWS, device=device,
                           scratch_dir=scratch_dir)
        print(render_preflight(report))
        if preflight_only or estimate_only:
            return
        assert out is not None
        result = prune_checkpoint(model, out, mix, options, allow_stacked=allow_stacked, progress=print,
                                  coverage_warn=coverage_warn)
        print(result.summary())
