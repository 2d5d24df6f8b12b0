#!/usr/bin/env bash
# The whole FP8 MoE candidate path at Qwen3.6-35B-A3B's real layer shapes, on a GPU machine, with figures.
#
#   1. build a checkpoint with the real layer shapes (benchmarks/real_shapes.py: random bf16 weights,
#      LAYERS decoder layers, the real vocabulary) and a packed calibration mix of synthetic text;
#   2. bench prune: REAP scoring on the GPU (hidden states in a bfloat16 scratch file), KEEP of 256
#      experts per layer kept;
#   3. bench quantize: FP8 (compressed-tensors, per-channel; BLOCK=128 for block scales), experts too;
#   4. bench run: serve the FP8 checkpoint with GPU vLLM, the serving preflight, then PACKS' quick tier
#      (LIMIT items); then bench serve's log and nvidia-smi say what the GPU held.
# The weights are random, so answers are noise and scores sit at chance: this checks that the path
# runs and loads at real shapes (FP8 MoE experts are what vLLM's CPU build cannot serve) and measures
# it, not model quality. The default pack is mmlu (no tools: a random model cannot pass the tool-call
# probe); it reads MMLU from BENCH_DATA_DIR when set, else from the hub.
#
# Not runnable on the CPU-only development machines. Needs: nvidia-smi, the .venv with the engine
# extra (scripts/setup.sh installs a CUDA torch when a GPU is visible) and .vllm-venv with GPU vLLM.
#
#   LAYERS=4 KEEP=128 SEQ_LEN=2048 SEQUENCES=16 PACKS=mmlu LIMIT=20 WORK=/tmp/q36 \
#     bash benchmarks/gpu_candidate_path.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LAYERS=${LAYERS:-4}            # 3 Gated DeltaNet layers + 1 full-attention layer: the real 3:1 pattern
KEEP=${KEEP:-128}              # experts kept per layer, of 256
SEQ_LEN=${SEQ_LEN:-2048}
SEQUENCES=${SEQUENCES:-16}
PACKS=${PACKS:-mmlu}
LIMIT=${LIMIT:-20}
BLOCK=${BLOCK:-}
WORK=${WORK:-$(mktemp -d /tmp/bench-gpu-path-XXXX)}
PY=${PY:-.venv/bin/python}
export BENCH_VLLM_PYTHON=${BENCH_VLLM_PYTHON:-$PWD/.vllm-venv/bin/python}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU visible (nvidia-smi): this script is for a GPU machine" >&2
  exit 2
fi
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "error: $PY has no CUDA torch: run scripts/setup.sh on this machine" >&2; exit 2; }
"$BENCH_VLLM_PYTHON" -c 'import vllm' || { echo "error: no vLLM at $BENCH_VLLM_PYTHON" >&2; exit 2; }

mkdir -p "$WORK/scratch"
log() { printf '[gpu-path] %s\n' "$*"; }
seconds() { local start=$1; echo $(( $(date +%s) - start )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/[gpu-path] gpu: /'

t=$(date +%s)
built=$("$PY" benchmarks/real_shapes.py --build-only --layers "$LAYERS" --seq-len "$SEQ_LEN" \
        --sequences "$SEQUENCES" --workdir "$WORK")
MODEL=$(echo "$built" | awk '/^model /{print $2}')
MIX=$(echo "$built" | awk '/^mix /{print $2}')
BUILD_S=$(seconds "$t")
log "built $MODEL ($(du -sh "$MODEL" | cut -f1)) in ${BUILD_S} s; mix $MIX"

t=$(date +%s)
"$PY" -m bench.cli prune --model "$MODEL" --calibration "$MIX" --keep "$KEEP" --device cuda \
  --scratch-dir "$WORK/scratch" --out "$WORK/pruned" | tee "$WORK/prune.log"
PRUNE_S=$(seconds "$t")

t=$(date +%s)
"$PY" -m bench.cli quantize --model "$WORK/pruned" --out "$WORK/fp8" ${BLOCK:+--block "$BLOCK"} | tee "$WORK/quantize.log"
QUANT_S=$(seconds "$t")

t=$(date +%s)
( while sleep 5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > "$WORK/gpu-mem.log" &
SAMPLER=$!
set +e
"$PY" -m bench.cli run --model "$WORK/fp8" --packs "$PACKS" --tier quick --limit "$LIMIT" \
  --max-model-len 4096 --runs-dir "$WORK/runs" --run-id fp8 --no-report 2>&1 | tee "$WORK/run.log"
RUN_RC=${PIPESTATUS[0]}
set -e
kill "$SAMPLER" 2>/dev/null || true
RUN_S=$(seconds "$t")

PEAK_MIB=$(sort -n "$WORK/gpu-mem.log" | tail -1)
echo
log "figures ($LAYERS layers at Qwen3.6-35B-A3B shapes, $SEQUENCES x $SEQ_LEN calibration tokens, keep $KEEP/256):"
log "  build ${BUILD_S} s"
log "  prune ${PRUNE_S} s: $(grep -E '^kept ' "$WORK/prune.log" | tail -1)"
grep -E '^layer [0-9]+: scored' "$WORK/prune.log" | sed 's/^/[gpu-path]     /'
log "  quantize ${QUANT_S} s: $(grep -E '^size ' "$WORK/quantize.log" | tail -1)"
log "  serve + preflight + quick tier: ${RUN_S} s, exit ${RUN_RC}; peak GPU memory in use ${PEAK_MIB:-?} MiB"
log "  per layer: prune $(( PRUNE_S / LAYERS )) s, quantize $(( QUANT_S / LAYERS )) s; 40 layers: ~$(( PRUNE_S * 40 / LAYERS / 60 )) min prune, ~$(( QUANT_S * 40 / LAYERS / 60 )) min quantize (build and embeddings included, so upper bounds)"
log "  run directory: $WORK/runs/fp8 (results.json, items.jsonl, manifest.json with the vLLM version and parsers)"
exit "$RUN_RC"
