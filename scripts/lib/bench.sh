# What the benchmark scripts share (sourced, not run): where the results and the release
# binaries are, a log line, the processes killed on exit, and waiting for a server to be ready.
#
# bench_init NAME: sets BENCH_LOCK [/tmp/bench.lock] and CARGO_TARGET_DIR [target/] (exported),
# bin (the release binaries), out (bench-results/NAME-<UTC time>/, made) and pids, an array of
# processes the EXIT trap kills.
bench_init() {
    export BENCH_LOCK=${BENCH_LOCK:-/tmp/bench.lock}
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
    bin="$CARGO_TARGET_DIR/release"
    out="bench-results/$1-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$out"
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
}

log() { printf '== %s\n' "$*" >&2; }

# wait_ready PORT NAME: waits (10 s at most) until /readyz on PORT answers; else exits with the
# end of NAME's log ($out/NAME.log).
wait_ready() {
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done
    echo "$2 did not start: $(tail -3 "$out/$2.log")" >&2
    exit 1
}
