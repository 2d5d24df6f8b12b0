"""The engine at Qwen3.6-35B-A3B's real layer shapes: scoring speed and memory, prune and FP8 times, 40-layer outlook.

Builds, in a temporary folder, a checkpoint whose decoder layers have Qwen3.6-35B-A3B's shapes
(hidden 2048, 256 routed experts 512 wide, top-8, a 512-wide shared expert; Gated DeltaNet linear
attention with 16 key and 32 value heads of 128, and gated full attention with 16 query heads and
2 KV heads of 256, three linear layers to one full one), with random bf16 weights and the real
vocabulary of 248,320. It is the text model only (``Qwen3_5MoeForCausalLM``, ``model.layers.*``):
the real checkpoint wraps the same layers in a vision-language model. Experts are stored fused
(``experts.gate_up_proj``, ``[256, 1024, 2048]``), as the family ships them. Then prints, in one run:

1. REAP scoring (``bench prune``'s ``prune_checkpoint``, in a fresh process each) at 1x and 4x the
   calibration tokens: scoring tokens per second, peak RSS (VmHWM), and the growth of the peak from
   1x to 4x, which should be near zero (the hidden states between layers live in a scratch file);
   scoring seconds per layer, linear-attention and full-attention layers apart;
2. prune write time per layer (the pruned checkpoint's bytes) and FP8 quantize time per layer
   (``bench quantize``, per-channel FP8 with experts, on the pruned checkpoint);
3. the extrapolation to the real model's 40 layers (30 linear, 10 full) and to a calibration set
   of 1,024 sequences of 16,384 tokens, at this machine's speed.

Every figure carries the 1-minute load average when it was taken: the machine may be shared.
Tokens are synthetic text packed into full sequences (their content does not matter to timing
with random weights).

    .venv/bin/python benchmarks/real_shapes.py [--layers 2] [--seq-len 512] [--sequences 4]
                                               [--keep 128] [--device cpu] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Qwen3.6-35B-A3B (model_type qwen3_5_moe, its text_config): the shapes that set time and memory.
QWEN36_35B_A3B: dict[str, Any] = {
    "vocab_size": 248320, "hidden_size": 2048, "num_hidden_layers": 40, "num_attention_heads": 16,
    "num_key_value_heads": 2, "head_dim": 256, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
    "num_experts": 256, "num_experts_per_tok": 8, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
    "full_attention_interval": 4, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25},
    "tie_word_embeddings": False,
}
REAL_LAYERS = 40
FIELD_SEQUENCES, FIELD_SEQ_LEN = 1024, 16384  # the REAP agentic recipe's scale
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ("expert router token layer prune model weight scale memory kernel tensor cache batch score "
         "attention python function return value list dict loop class import error test serve").split()


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def layer_types(layers: int) -> list[str]:
    """Qwen3.6's pattern (every fourth layer full attention), ending on a full layer when short."""
    if layers < 4:
        return ["linear_attention"] * (layers - 1) + ["full_attention"]
    return ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]


def config(layers: int) -> dict[str, Any]:
    from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig

    values = {**QWEN36_35B_A3B, "num_hidden_layers": layers, "layer_types": layer_types(layers)}
    values.pop("full_attention_interval")
    text = Qwen3_5MoeTextConfig(**values, bos_token_id=None, eos_token_id=1, pad_token_id=0)
    out = text.to_dict()
    out.update(architectures=["Qwen3_5MoeForCausalLM"], torch_dtype="bfloat16")
    return out


def build(out: Path, layers: int) -> Path:
    """Write the real-shape checkpoint tensor by tensor (one tensor in memory at a time)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from bench.engine.compute.stream_writer import write_streamed
    from bench.engine.planning.layout import PlannedTensor

    raw = config(layers)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw))
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    del skeleton
    plan = [PlannedTensor(name, "BF16", shape) for name, shape in shapes.items()]
    generator = torch.Generator().manual_seed(0)

    def tensors():  # type: ignore[no-untyped-def]
        for t in plan:
            if t.name.endswith("norm.weight") or len(t.shape) == 1:
                yield t.name, (1.0 + 0.1 * torch.randn(t.shape, generator=generator)).to(torch.bfloat16)
            else:
                scale = 0.5 / math.sqrt(t.shape[-1])
                # Fused experts in slices of 16: never a whole float32 [256, 1024, 2048] in memory.
                for start in range(0, t.shape[0], 16 if len(t.shape) == 3 else t.shape[0]):
                    rows = min(16 if len(t.shape) == 3 else t.shape[0], t.shape[0] - start)
                    chunk = torch.randn((rows, *t.shape[1:]), generator=generator) * scale
                    yield t.name, chunk.to(torch.bfloat16)

    write_streamed(out, plan, tensors(), max_shard_bytes=2 << 30)
    (out / "config.json").write_text(json.dumps(raw, indent=1))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<|pad|>", "<|im_end|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(synthetic_text(50, 1), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML  # so a server can take chat requests (the answers are noise: random weights)
    fast.save_pretrained(out)
    return out


def synthetic_text(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(300, 900))) for _ in range(count)]


def write_mix(work: Path, sequences: int, seq_len: int) -> Path:
    """A packed mix of exactly ``sequences`` x ``seq_len`` tokens of synthetic text."""
    data = work / "text.jsonl"
    if not data.is_file():
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in synthetic_text(2000, 2)))
    mix = work / f"mix-{sequences}x{seq_len}.yaml"
    mix.write_text(json.dumps({"name": mix.stem, "seq_len": seq_len, "samples": sequences, "pack": True, "seed": 0,
                               "datasets": [{"adapter": "text", "count": sequences, "data_files": str(data)}]}))
    return mix


# --------------------------------------------------------------------------------------------
# Children: each measurement in a fresh process, so each peak RSS is its own


def child_prune(args: argparse.Namespace) -> dict[str, Any]:
    from bench.engine.compute.memory import peak_rss_bytes
    from bench.engine.compute.prune import prune_checkpoint
    from bench.engine.planning.calibration import load_mix
    from bench.engine.planning.prune_plan import PruneOptions

    lines: list[tuple[float, str]] = []
    mix = load_mix(args.mix)
    options = PruneOptions(keep=args.keep, device=args.device, scratch_dir=args.scratch)
    result = prune_checkpoint(args.model, args.out, mix, options, progress=lambda line: lines.append((time.time(), line)))
    layers = []
    for _, line in lines:
        match = re.match(r"layer (\d+): scored .* on (\d+) tokens in ([0-9.]+) s", line)
        if match:
            layers.append({"layer": int(match[1]), "tokens": int(match[2]), "seconds": float(match[3])})
    return {"seconds": result.seconds, "scoring_seconds": result.record["scoring_seconds"],
            "tokens": result.record["calibration"]["tokens"], "peak_rss": peak_rss_bytes(), "layers": layers,
            "after_bytes": result.after_bytes, "load": os.getloadavg()[0]}


def child_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The fixed cost: interpreter, torch, transformers, the tokenizer and the model classes, no weights."""
    from bench.engine.compute.memory import peak_rss_bytes
    from bench.engine.compute.reap import LayerRunner
    from bench.engine.planning.calibration import load_tokenizer
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.moe import resolve

    checkpoint = Checkpoint.open(args.model)
    load_tokenizer(args.model)
    LayerRunner(checkpoint, resolve(checkpoint)).close()
    return {"peak_rss": peak_rss_bytes()}


def child_upcast(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds to upcast one layer's 256 routed experts to float32, the cost each sequence pays per pass."""
    import torch

    from bench.engine.compute.reap import LayerRunner, _experts_module
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.moe import resolve

    checkpoint = Checkpoint.open(args.model)
    module = LayerRunner(checkpoint, resolve(checkpoint)).build(0)
    experts = _experts_module(module)
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for e in range(experts.gate_up_proj.shape[0]):
            experts.gate_up_proj[e].to(torch.float32)
            experts.down_proj[e].to(torch.float32)
        best = min(best, time.perf_counter() - started)
    return {"seconds": best}


def child_store(args: argparse.Namespace) -> dict[str, Any]:
    """The scratch store alone at field-scale token counts: write every sequence, then read and rewrite it once."""
    import torch

    from bench.engine.compute.hidden_store import DiskHiddenStates
    from bench.engine.compute.memory import peak_rss_bytes

    lengths = [FIELD_SEQ_LEN] * (args.tokens // FIELD_SEQ_LEN)
    started = time.perf_counter()
    with DiskHiddenStates(args.scratch, lengths, 2048) as store:
        block = torch.randn(FIELD_SEQ_LEN, 2048)
        for i in range(len(store)):
            store.write(i, block)
        for i in range(len(store)):  # one layer's pass: read, (no layer here), write back
            store.write(i, store.read(i))
        size = store.nbytes
    return {"seconds": time.perf_counter() - started, "peak_rss": peak_rss_bytes(), "bytes": size}


def child_quantize(args: argparse.Namespace) -> dict[str, Any]:
    from bench.engine.compute.fp8 import quantize_checkpoint
    from bench.engine.compute.memory import peak_rss_bytes

    marks: list[tuple[float, str]] = []
    started = time.time()
    result = quantize_checkpoint(args.model, args.out, progress=lambda line: marks.append((time.time(), line)))
    per_layer: dict[int, float] = {}
    last = started
    for stamp, line in marks:
        match = re.search(r"layers\.(\d+)\.", line)
        if match:
            per_layer[int(match[1])] = per_layer.get(int(match[1]), 0.0) + stamp - last
        last = stamp
    return {"seconds": result.seconds, "per_layer": per_layer, "peak_rss": peak_rss_bytes(),
            "after_bytes": result.after_bytes, "load": os.getloadavg()[0]}


def run_child(kind: str, threads: int, **kwargs: Any) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--threads", str(threads)]
    for key, value in kwargs.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--sequences", type=int, default=4, help="sequences at 1x (4x runs four times as many)")
    parser.add_argument("--keep", type=int, default=128, help="experts kept per layer (of 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 on a shared, overloaded machine, where OpenMP "
                        "spin-waits make small kernels tens of times slower")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--build-only", action="store_true",
                        help="build the checkpoint in WORKDIR/model and a packed mix in WORKDIR, print their paths, stop")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mix", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--store-tokens", type=int, default=16 * FIELD_SEQ_LEN,
                        help="tokens for the scratch store's own 1x run (4x runs four times as many)")
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        children = {"prune": child_prune, "baseline": child_baseline, "quantize": child_quantize,
                    "upcast": child_upcast, "store": child_store}
        print(json.dumps(children[args.child](args)))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-real-shapes-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        model = work / "model"
        if not (model / "config.json").is_file():
            build(model, args.layers)
        print(f"model {model}\nmix {write_mix(work, args.sequences, args.seq_len)}")
        return
    try:
        report(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, work: Path) -> None:
    started = time.perf_counter()
    model = work / "model"
    if not (model / "config.json").is_file():
        build(model, args.layers)
    types = layer_types(args.layers)
    size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    print(f"checkpoint: Qwen3.6-35B-A3B layer shapes, {args.layers} layers ({', '.join(types)}), "
          f"{gib(size)}, built in {time.perf_counter() - started:.0f} s ({load()})")
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    baseline = run_child("baseline", args.threads, model=model)
    upcast = run_child("upcast", args.threads, model=model)["seconds"]
    runs = {}
    for factor in (1, 4):
        sequences = args.sequences * factor
        mix = write_mix(work, sequences, args.seq_len)
        out = work / f"pruned-{factor}x"
        shutil.rmtree(out, ignore_errors=True)
        runs[factor] = run_child("prune", args.threads, model=model, out=out, mix=mix, keep=args.keep, device=args.device,
                                 scratch=scratch)
    print(f"fixed cost (interpreter, torch, transformers, tokenizer, model classes): peak RSS {gib(baseline['peak_rss'])}")
    for factor, run in runs.items():
        rate = run["tokens"] / run["scoring_seconds"]
        print(f"REAP scoring {factor}x: {run['tokens']} tokens ({args.sequences * factor} x {args.seq_len}) in "
              f"{run['scoring_seconds']:.1f} s = {rate:.1f} tokens/s; peak RSS {gib(run['peak_rss'])} "
              f"(net of the fixed cost {gib(run['peak_rss'] - baseline['peak_rss'])}) (load {run['load']:.2f})")
    growth = runs[4]["peak_rss"] - runs[1]["peak_rss"]
    print(f"peak RSS from 1x to 4x tokens: {growth / (1 << 20):+.0f} MiB ({growth / runs[1]['peak_rss']:+.1%}); "
          f"the in-memory path would have added {gib(3 * args.sequences * args.seq_len * 2048 * 4)} of float32 states")
    stores = {f: run_child("store", args.threads, scratch=scratch, tokens=args.store_tokens * f) for f in (1, 4)}
    for factor, store in stores.items():
        tokens = args.store_tokens * factor
        print(f"scratch store alone, {factor}x: {tokens} tokens ({tokens // FIELD_SEQ_LEN} x {FIELD_SEQ_LEN}), "
              f"{gib(store['bytes'])} on disk, written, read and rewritten in {store['seconds']:.0f} s; peak RSS "
              f"{gib(store['peak_rss'])} (in memory: {gib(tokens * 2048 * 4)} of float32 states)")

    # A layer's time is its build (reading the weights twice: full, then pruned) plus, per sequence, one
    # upcast of the experts per pass and per-token work. The 1x and 4x runs differ only in the number
    # of sequences, so together they give the per-sequence cost; the measured upcast splits that into
    # its fixed part and a per-token part, which is what longer sequences scale.
    upcast_per_sequence = upcast * (1 + args.keep / 256)  # scoring pass: all experts; pruned pass: the kept
    per_sequence, per_token, build_s = {}, {}, {}
    for index, kind in enumerate(types):
        t1 = next(e["seconds"] for e in runs[1]["layers"] if e["layer"] == index)
        t4 = next(e["seconds"] for e in runs[4]["layers"] if e["layer"] == index)
        per_sequence[kind] = (t4 - t1) / (3 * args.sequences)
        build_s[kind] = t1 - args.sequences * per_sequence[kind]
        per_token[kind] = max(per_sequence[kind] - upcast_per_sequence, 0.0) / args.seq_len
    print(f"  expert upcast (256 experts to float32): {upcast:.2f} s; each sequence pays it per layer, for the "
          f"scoring pass and (for the {args.keep} kept) the pruned pass: {upcast_per_sequence:.2f} s")
    for kind in per_sequence:
        print(f"  {kind} layer: build {build_s[kind]:.1f} s, {per_sequence[kind]:.2f} s per {args.seq_len}-token "
              f"sequence = upcast + {per_token[kind] * 1e3:.2f} ms per token (both passes)")

    prune_write = runs[1]["seconds"] - runs[1]["scoring_seconds"]
    quant = run_child("quantize", args.threads, model=work / "pruned-1x", out=work / "fp8")
    quant_layer = sum(quant["per_layer"].values()) / max(len(quant["per_layer"]), 1)
    embeddings = 2 * QWEN36_35B_A3B["vocab_size"] * QWEN36_35B_A3B["hidden_size"] * 2
    layer_bytes = (runs[1]["after_bytes"] - embeddings) / args.layers
    rate = runs[1]["after_bytes"] / prune_write
    print(f"prune, all but scoring (samples, plan, write {gib(runs[1]['after_bytes'])}: {gib(layer_bytes)} per layer "
          f"+ embeddings and head): {prune_write:.1f} s, {rate / (1 << 20):.0f} MiB/s (load {runs[1]['load']:.2f})")
    print(f"quantize FP8 (per-channel, experts too) of the pruned checkpoint: {quant['seconds']:.1f} s in all, "
          f"{quant_layer:.1f} s per decoder layer; peak RSS {gib(quant['peak_rss'])} (load {quant['load']:.2f})")

    full, linear = REAL_LAYERS // 4, REAL_LAYERS - REAL_LAYERS // 4
    counts = {"linear_attention": linear, "full_attention": full}
    field_tokens = FIELD_SEQUENCES * FIELD_SEQ_LEN
    token_s = sum(counts[k] * per_token[k] for k in per_token)
    sequence_s = REAL_LAYERS * upcast_per_sequence
    layers_s = sum(counts[k] * build_s[k] for k in build_s)
    field_s = layers_s + FIELD_SEQUENCES * sequence_s + field_tokens * token_s
    run_s = layers_s + args.sequences * 4 * sequence_s + runs[4]["tokens"] * token_s
    print(f"40 layers ({linear} linear, {full} full), at this machine's speed:")
    print(f"  scoring: {layers_s:.0f} s of layer builds + {sequence_s:.0f} s per sequence + {token_s * 1e3:.0f} ms per "
          f"token: {run_s / 60:.0f} min for this 4x run's {runs[4]['tokens']} tokens; {field_s / 3600:.0f} h "
          f"({field_s / 86400:.1f} days) for {FIELD_SEQUENCES} x {FIELD_SEQ_LEN} tokens (full attention's per-token "
          f"cost grows with length: not counted)")
    print(f"  prune write ~{(REAL_LAYERS * layer_bytes + embeddings) / rate / 60:.1f} min; FP8 quantize "
          f"~{quant_layer * REAL_LAYERS / 60:.1f} min")
    print(f"  scratch disk for {FIELD_SEQUENCES} x {FIELD_SEQ_LEN} tokens: {gib(field_tokens * 2048 * 2)} (bfloat16); "
          f"peak RSS stays ~{gib(runs[4]['peak_rss'])} plus {gib(field_tokens * 36)} of token ids")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
