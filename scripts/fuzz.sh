#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 30), from a copy of its seed corpus
# (fuzz/corpus/TARGET), and prints the executions of each. Fails when a target crashes; the input
# is kept in fuzz/artifacts/TARGET/. docs/fuzzing.md says what each target checks.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_RUNS           stop a target after this many executions as well (default: no limit)
#   FUZZ_CODEGEN_UNITS  codegen units of the build (default 16: a quick build for short runs;
#                       1 builds slower and runs faster, for long runs)
#   FUZZ_TARGETS        the targets to run, space-separated (default: all)
#
# The toolchain is stable, and libFuzzer's instrumentation needs a nightly flag (-Zsanitizer),
# hence RUSTC_BOOTSTRAP. Builds and runs are niced: the machines this runs on are shared.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
runs="${FUZZ_RUNS:--1}"
units="${FUZZ_CODEGEN_UNITS:-16}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list)}"
echo "== building the fuzz targets (codegen units: $units)"
start=$(date +%s)
# Debug assertions on: an arithmetic overflow is a bug worth a crash report.
(cd fuzz && nice cargo fuzz build --debug-assertions --codegen-units "$units")
echo "   built in $(($(date +%s) - start)) s"

triple=$(rustc -vV | sed -n 's/^host: //p')
bin="fuzz/target/$triple/release"
# The runs grow their corpus in a scratch copy: the repository keeps only the seeds.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
summary=""
for target in $targets; do
    mkdir -p "$work/$target" "fuzz/artifacts/$target"
    cp fuzz/corpus/"$target"/* "$work/$target/"
    echo "== $target: up to $seconds s"
    log="$work/$target.log"
    status=0
    began=$(date +%s)
    # -timeout: one input taking seconds is a hang worth reporting, not a slow machine.
    nice "$bin/$target" "$work/$target" \
        -max_total_time="$seconds" -runs="$runs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1 || status=$?
    took=$(($(date +%s) - began))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        failed=1
        result="CRASH"
        # What libFuzzer said: the panic (or sanitizer report), the first frames, the input's file.
        grep -E -A 30 "panicked at|^==[0-9]+==ERROR|^ALARM|^==[0-9]+== ERROR" "$log" | head -n 40 || true
        grep -E "^SUMMARY|Test unit written" "$log" || true
    else
        result="ok"
    fi
    summary+=$(printf '%-16s %12s executions %5s s  %s' "$target" "${execs:-?}" "$took" "$result")$'\n'
done
echo "== fuzzing summary"
printf '%s' "$summary"
exit "$failed"
