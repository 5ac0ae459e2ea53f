#!/usr/bin/env bash
# Runs the fuzz targets built by `make fuzz`, each for a bounded time, from its
# committed seed corpus (tests/fuzz/corpus/NAME, never written to).
#
#   tests/fuzz/run.sh BUILD_DIR SECONDS [NAME...]    (no NAME: every target)
#
# New inputs a run finds go to a temporary folder, deleted afterwards; with
# FUZZ_KEEP=1 they go to BUILD_DIR/corpus/NAME instead and the next run starts
# from them too (long runs, docs/testing.md). A crash, leak, timeout or broken
# property fails the script; the input that caused it is saved in
# BUILD_DIR/artifacts/NAME/ and its path printed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run.sh BUILD_DIR SECONDS [NAME...]}
seconds=${2:?usage: run.sh BUILD_DIR SECONDS [NAME...]}
shift 2
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for src in "$here"/fuzz_*.c; do
    name=$(basename "$src" .c)
    names+=("${name#fuzz_}")
  done
fi

work=""
trap '[ -n "$work" ] && [ "${FUZZ_KEEP:-0}" != 1 ] && rm -rf "$work"' EXIT

failed=0
for name in "${names[@]}"; do
  bin="$build/fuzz_$name"
  seeds="$here/corpus/$name"
  if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then
    echo "fuzz_$name: $bin or $seeds is missing (make fuzz builds the targets)" >&2
    exit 1
  fi
  artifacts="$build/artifacts/$name"
  mkdir -p "$artifacts"
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    work="$build/corpus/$name"
    mkdir -p "$work"
  else
    work=$(mktemp -d)
  fi
  dict=()
  if [ -f "$here/dict/$name.dict" ]; then dict=(-dict="$here/dict/$name.dict"); fi
  log="$artifacts/last-run.log"
  # The first folder receives what the run finds; the seeds are only read.
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "${dict[@]}" "$work" "$seeds" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz_$name: ok, ${runs:-?} inputs in ${seconds} s"
  else
    failed=1
    echo "fuzz_$name: FAILED"
    grep -E 'property broken|ERROR: |SUMMARY: ' "$log" | head -n 5 | sed 's/^/  /'
    echo "  input: $(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)"
    echo "  replay: $bin INPUT    full log: $log"
  fi
  if [ "${FUZZ_KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
  work=""
done
exit "$failed"
