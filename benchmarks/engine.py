"""Engine throughput and memory on this machine, in one run.

Builds a synthetic Qwen3-MoE checkpoint (random bf16 weights, written streamed; or use --model),
then prints:

1. quantize: ``quantize_checkpoint`` (what ``bench quantize`` runs) wall time against copying the
   same safetensors files, both through the page cache, best and median of --repeats (target:
   under 2x the copy time), on two checkpoints: one whose experts have a real family's shapes
   (Qwen3-30B-A3B's: hidden 2048, experts 768 wide; 2 layers of 32 experts, 0.6 GiB), and the
   small-expert checkpoint the other figures use (512 x 256 experts, 16x smaller than any
   shipped MoE's), where fixed per-tensor costs weigh most. Two one-time costs, which the first
   quantize in a process pays and which do not grow with the checkpoint, are printed on their
   own lines and left out of the timed runs: the import of compressed-tensors, and the
   quantization kernel's first call (importing numba, then compiling the kernel for bfloat16, a
   few seconds, once per machine: the machine code is cached on disk, so later processes only
   load it; the line says which happened). One untimed copy and one untimed quantize come first,
   so neither timed series pays for memory the machine touches for the first time (on a virtual
   machine that is several times slower than reuse);
2. REAP scoring: floating-point work done per second while scoring (both passes: score, then the
   pruned layer's outputs; projections, attention scores, routed experts, router) as a fraction
   of this machine's own float32 torch matmul throughput, measured in the same run before and
   after the prune;
3. prune memory: peak RSS (VmHWM) of a fresh ``prune_checkpoint`` process as a fraction of the
   checkpoint size, raw and net of that process's fixed cost (interpreter, torch, transformers,
   the tokenizer and the model classes, loaded by the same steps before any weight is read)
   (target: net under 25%).

Every figure carries the 1-minute load average when it was taken: the machine may be shared.

    .venv/bin/python benchmarks/engine.py [--layers 16 --experts 32 --hidden 512 --expert-size 256]
                                          [--model DIR] [--tokens 4096] [--device cpu|cuda]
                                          [--threads N] [--repeats 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

WORDS = ("expert router token layer prune model weight scale memory kernel tensor cache batch score "
         "attention python function return value list dict loop class import error test serve").split()


# Qwen3-30B-A3B's layer shapes (hidden 2048, 128 experts 768 wide), with fewer layers and experts:
# per-tensor costs and throughput depend on a tensor's shape, not on how many there are.
REAL_SHAPES = {"layers": 2, "experts": 32, "hidden": 2048, "expert_size": 768}


def synthetic_text(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 600))) for _ in range(count)]


def build_synthetic(out: Path, layers: int, experts: int, hidden: int, expert_size: int, vocab: int = 2048) -> Path:
    """A Qwen3-MoE checkpoint with random weights, written tensor by tensor."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bench.engine.compute.stream_writer import write_streamed
    from bench.engine.planning.layout import PlannedTensor

    heads, head_dim = max(hidden // 64, 1), 64
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            f"{p}input_layernorm.weight": (hidden,),
            f"{p}post_attention_layernorm.weight": (hidden,),
            f"{p}self_attn.q_proj.weight": (heads * head_dim, hidden),
            f"{p}self_attn.k_proj.weight": (2 * head_dim, hidden),
            f"{p}self_attn.v_proj.weight": (2 * head_dim, hidden),
            f"{p}self_attn.o_proj.weight": (hidden, heads * head_dim),
            f"{p}self_attn.q_norm.weight": (head_dim,),
            f"{p}self_attn.k_norm.weight": (head_dim,),
            f"{p}mlp.gate.weight": (experts, hidden),
        })
        for e in range(experts):
            shapes[f"{p}mlp.experts.{e}.gate_proj.weight"] = (expert_size, hidden)
            shapes[f"{p}mlp.experts.{e}.up_proj.weight"] = (expert_size, hidden)
            shapes[f"{p}mlp.experts.{e}.down_proj.weight"] = (hidden, expert_size)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    plan = [PlannedTensor(name, "BF16", shape) for name, shape in shapes.items()]
    generator = torch.Generator().manual_seed(0)

    def tensors():  # type: ignore[no-untyped-def]
        for t in plan:
            if len(t.shape) == 1:
                yield t.name, torch.ones(t.shape, dtype=torch.bfloat16)
            else:
                yield t.name, (torch.randn(t.shape, generator=generator) / math.sqrt(t.shape[-1])).to(torch.bfloat16)

    write_streamed(out, plan, tensors(), max_shard_bytes=1 << 30)
    config = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": 4 * hidden, "moe_intermediate_size": expert_size,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 2, "head_dim": head_dim,
        "num_experts": experts, "num_experts_per_tok": 4, "norm_topk_prob": True, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "hidden_act": "silu", "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "eos_token_id": 1,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 16, special_tokens=["<|pad|>", "<|im_end|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(synthetic_text(50, 1), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>").save_pretrained(out)
    return out


def load() -> str:
    """The 1-minute load average, printed beside each figure."""
    return f"load {os.getloadavg()[0]:.2f}"


def matmul_gflops(size: int, device: str, seconds: float = 2.0) -> float:
    """float32 ``size``^3 matmul throughput: this machine's own yardstick for the scoring figure."""
    import torch

    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        runs += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def copy_seconds(model: Path, dest: Path) -> float:
    """Copy the weight files as ``cp`` would (no fsync: quantize does not fsync either)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    started = time.perf_counter()
    for file in sorted(model.glob("*.safetensors")):
        shutil.copyfile(file, dest / file.name)
    return time.perf_counter() - started


def one_time_costs() -> dict[str, Any]:
    """Seconds of the compressed-tensors import and of the kernel's first call, each paid once per process."""
    started = time.perf_counter()
    import compressed_tensors.quantization  # type: ignore[import-untyped]  # noqa: F401  (timed alone)

    costs: dict[str, Any] = {"import_s": time.perf_counter() - started}
    costs["compile_s"], costs["compile_how"] = first_kernel_call()
    return costs


def quantize_vs_copy(model: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Interleaved copy and quantize runs, so drift in the machine's load hits both alike."""
    from bench.engine.compute.fp8 import quantize_checkpoint

    figures: dict[str, Any] = {"copy": [], "quantize": [], "load": []}
    copy_seconds(model, work / "copy")  # warms the page cache for both
    quantize_checkpoint(model, work / "fp8")  # and the memory a quantize run uses
    for _ in range(repeats):
        os.sync()  # earlier writes (the build, the last run) are not flushed during a timed run
        figures["copy"].append(copy_seconds(model, work / "copy"))
        shutil.rmtree(work / "fp8", ignore_errors=True)
        os.sync()
        result = quantize_checkpoint(model, work / "fp8")
        figures["quantize"].append(result.seconds)
        figures["load"].append(os.getloadavg()[0])
    figures["worst_error"], figures["after_bytes"] = result.worst_error, result.after_bytes
    shutil.rmtree(work / "copy", ignore_errors=True)
    shutil.rmtree(work / "fp8", ignore_errors=True)
    return figures


def first_kernel_call() -> tuple[float, str]:
    """Seconds of the quantization kernel's first call here, and whether it compiled or loaded."""
    import torch

    started = time.perf_counter()
    from bench.engine.compute.fp8 import ChannelQuantizer
    from bench.engine.compute.fp8_kernel import quantize_channels

    ChannelQuantizer().quantize(torch.ones(64, dtype=torch.bfloat16), [(4, 16)])
    seconds = time.perf_counter() - started
    loaded = sum(quantize_channels.stats.cache_hits.values()) > 0
    return seconds, "loaded from numba's on-disk cache" if loaded else "compiled, now cached on disk"


def attention_flops(config: dict[str, Any], lengths: list[int]) -> float:
    """Multiply-adds x2 of causal attention scores and weighted values, per layer pass."""
    from bench.engine.planning.moe import text_config

    text = text_config(config)
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    return 2.0 * sum(2 * heads * head_dim * n * (n + 1) / 2 for n in lengths)


def scoring_flops(config: dict[str, Any], lengths: list[int], passes: int) -> float:
    """Multiply-adds x2 of the layer work REAP scoring performs (projections, attention, experts, router)."""
    from bench.engine.planning.moe import text_config

    text = text_config(config)
    hidden = text["hidden_size"]
    heads, kv = text["num_attention_heads"], text.get("num_key_value_heads", text["num_attention_heads"])
    head_dim = text.get("head_dim") or hidden // heads
    projections = hidden * head_dim * (2 * heads + 2 * kv)
    experts = text.get("num_experts") or text.get("num_local_experts")
    expert = 3 * hidden * text.get("moe_intermediate_size", text.get("intermediate_size"))
    per_token = projections + text["num_experts_per_tok"] * expert + experts * hidden
    per_pass = 2.0 * per_token * sum(lengths) + attention_flops(config, lengths)
    return per_pass * text["num_hidden_layers"] * passes


# The child reaches the fixed cost first through the same steps prune_checkpoint takes (tokenizer,
# calibration text, model classes on the meta device), then prunes: VmHWM is per process, so the
# parent's size never leaks in (ru_maxrss would: it survives exec).
PRUNE_CHILD = r"""
import json, os, sys, time
import torch
model, out, mix_path, device, threads = sys.argv[1:6]
if int(threads):
    torch.set_num_threads(int(threads))
from bench.engine.compute.memory import peak_rss_bytes
from bench.engine.compute.prune import prune_checkpoint
from bench.engine.compute.reap import LayerRunner
from bench.engine.planning.calibration import build_samples, load_mix
from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.moe import resolve
from bench.engine.planning.prune_plan import PruneOptions
mix = load_mix(mix_path)
lengths = [len(ids) for ids in build_samples(mix, model).token_ids]
checkpoint = Checkpoint.open(model)
LayerRunner(checkpoint, resolve(checkpoint), device=device).close()
baseline = peak_rss_bytes()
started = time.perf_counter()
result = prune_checkpoint(model, out, mix, PruneOptions(compression=0.5, device=device))
print(json.dumps({"baseline": baseline, "peak": peak_rss_bytes(), "seconds": time.perf_counter() - started,
                  "scoring_seconds": result.record["scoring_seconds"], "lengths": lengths,
                  "load": os.getloadavg()[0]}))
"""


def write_mix(work: Path, tokens: int) -> Path:
    """A calibration mix of synthetic text, about ``tokens`` tokens long."""
    texts = synthetic_text(max(tokens // 400, 4), 2)
    data = work / "calibration.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    mix = work / "mix.yaml"
    mix.write_text(json.dumps({"name": "benchmark", "seq_len": 1024, "samples": len(texts), "seed": 0,
                               "datasets": [{"adapter": "text", "count": len(texts), "data_files": str(data)}]}))
    return mix


def prune_in_child(model: Path, work: Path, mix: Path, device: str, threads: int) -> dict[str, Any]:
    shutil.rmtree(work / "pruned", ignore_errors=True)
    child = subprocess.run(
        [sys.executable, "-c", PRUNE_CHILD, str(model), str(work / "pruned"), str(mix), device, str(threads)],
        capture_output=True, text=True, cwd=REPO,
    )
    if child.returncode != 0:
        raise SystemExit(f"prune child failed:\n{child.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="existing bf16 Qwen3-MoE-family checkpoint (else synthetic)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--expert-size", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=4096, help="about this many calibration tokens for the prune")
    parser.add_argument("--device", default="cpu", help="where REAP scoring and the matmul yardstick run (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="copy and quantize runs each")
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary directory, removed)")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device; use --device cpu")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    import torch

    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.sizes import gib

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"device {args.device}, {load()}")
    if args.model:
        model = args.model
        shape = "given checkpoint"
    else:
        started = time.perf_counter()
        model = build_synthetic(work / "model", args.layers, args.experts, args.hidden, args.expert_size)
        shape = (f"synthetic Qwen3-MoE: {args.layers} layers x {args.experts} experts (top-4), hidden {args.hidden}, "
                 f"expert size {args.expert_size}; built in {time.perf_counter() - started:.1f} s")
    checkpoint = Checkpoint.open(model)
    size = checkpoint.file_bytes()
    print(f"checkpoint: {gib(size)} bf16 ({size / 1e6:.0f} MB), {shape}")

    costs = one_time_costs()
    print(f"[quantize] one-time compressed-tensors import {costs['import_s']:.2f} s")
    print(f"[quantize] one-time kernel first call {costs['compile_s']:.2f} s (numba import, bfloat16 kernel "
          f"{costs['compile_how']})")
    quantize_rows = []
    if not args.model:  # the same conversion on experts of a real family's shapes
        real = build_synthetic(work / "real-shapes", REAL_SHAPES["layers"], REAL_SHAPES["experts"],
                               REAL_SHAPES["hidden"], REAL_SHAPES["expert_size"])
        quantize_rows += quantize_figures(real, work, args.repeats, "Qwen3-30B-A3B expert shapes")
        shutil.rmtree(real, ignore_errors=True)
    quantize_rows += quantize_figures(model, work, args.repeats,
                                      "given checkpoint" if args.model else "512x256 experts")

    mix = write_mix(work, args.tokens)
    matmul_before, load_before = matmul_gflops(1024, args.device), load()
    prune = prune_in_child(model, work, mix, args.device, args.threads)
    matmul_after, load_after = matmul_gflops(1024, args.device), load()
    matmul = (matmul_before + matmul_after) / 2
    achieved = scoring_flops(checkpoint.config, prune["lengths"], passes=2) / prune["scoring_seconds"] / 1e9
    print(f"[reap] scored {sum(prune['lengths'])} tokens ({len(prune['lengths'])} sequences) in "
          f"{prune['scoring_seconds']:.1f} s (whole prune {prune['seconds']:.1f} s, load {prune['load']:.2f} at its end): "
          f"{achieved:.2f} GFLOP/s; fp32 1024^3 matmul {matmul_before:.1f} ({load_before}) / "
          f"{matmul_after:.1f} ({load_after}) GFLOP/s before / after")
    net = prune["peak"] - prune["baseline"]
    print(f"[prune memory] peak RSS {gib(prune['peak'])}; fixed cost before any weight {gib(prune['baseline'])}; "
          f"net {gib(net)}")

    rows = [
        *quantize_rows,
        ("REAP scoring / torch matmul", f"{achieved / matmul:.1%}", "-", "-", f"{load_before} / {load_after}"),
        ("prune peak RSS / checkpoint, net", f"{net / size:.1%}", "< 25%", verdict(net / size < 0.25),
         f"load {prune['load']:.2f}"),
        ("prune peak RSS / checkpoint, raw", f"{prune['peak'] / size:.1%}", "-", "-", ""),
    ]
    print(f"\n{'figure':<60} {'value':>8} {'target':>7}  {'verdict':<8} when")
    for name, value, target, met, when in rows:
        print(f"{name:<60} {value:>8} {target:>7}  {met:<8} {when}")
    return 0


def quantize_figures(model: Path, work: Path, repeats: int, label: str) -> list[tuple[str, str, str, str, str]]:
    """Time quantize against copy on ``model``, print the runs, and return the table's two rows."""
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.sizes import gib

    size = Checkpoint.open(model).file_bytes()
    q = quantize_vs_copy(model, work, repeats)
    best, median = min(q["quantize"]) / min(q["copy"]), statistics.median(q["quantize"]) / statistics.median(q["copy"])
    print(f"[quantize] {label}, {gib(size)}: copy s {fmt(q['copy'])}; quantize s {fmt(q['quantize'])} "
          f"({size / min(q['quantize']) / 1e6:.0f} MB/s in, worst rel. error {q['worst_error']:.4f}); "
          f"load {fmt(q['load'])}")
    return [
        (f"quantize / copy time, {label} (best)", f"{best:.2f}x", "< 2x", verdict(best < 2), f"load {fmt(q['load'])}"),
        (f"quantize / copy time, {label} (median)", f"{median:.2f}x", "< 2x", verdict(median < 2), ""),
    ]


def fmt(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    raise SystemExit(main())
