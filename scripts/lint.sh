#!/usr/bin/env bash
# ruff over the tree, then mypy over the import package `bench` exactly as the wheel lays it out.
# harness/ is `bench` and packs/ is `bench.packs` (pyproject's package-dir), so mypy reads a tree of
# symlinks with that shape under build/typecheck/ instead of the folders themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BENCH_VENV:-.venv}/bin
"$BIN/ruff" check harness packs tests benchmarks
tree=build/typecheck
rm -rf "$tree" && mkdir -p "$tree"
cp -rs "$PWD/harness" "$tree/bench"
cp -rs "$PWD/packs" "$tree/bench/packs"
(cd "$tree" && "$OLDPWD/$BIN/mypy" --config-file "$OLDPWD/pyproject.toml" --cache-dir "$OLDPWD/.cache/mypy" bench)
