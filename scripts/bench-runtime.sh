#!/usr/bin/env bash
# The gateway's runtime modes (`[runtime] mode = "work_stealing" | "per_core"`) at several core
# counts, in one sitting, against the mock upstream alone and the bare forwarder:
#
#   CORES="1 2" bash scripts/bench-runtime.sh        # on a larger machine: CORES="1 2 4 8"
#
# 1. Instructions per request (scripts/callgrind-gateway.sh), non-streamed and streamed (16
#    tokens), in each mode with 2 threads, and the forwarder's: what a request costs in either
#    mode, however many cores there are.
# 2. For each N in CORES: the forwarder and the gateway in each mode with `threads = N`, each
#    confined to cores 0..N-1 (taskset; per-core also pinned), then c=CONCURRENCY for DURATION
#    seconds with oha, non-streamed and streamed, ROUNDS rounds alternating, and the mock
#    alone. Requests/s, the ratio to the forwarder at the same N (the figure to compare, as the
#    forwarder pays the same HTTP work on the same cores), and each mode's scaling from the
#    first N.
# The mock and oha are not confined: on a machine with few cores they share the gateway's, and
# the scaling they allow is the ceiling of what the figures can show (BENCHMARKS.md).
#
# Builds in release. Needs valgrind, oha (see callgrind-gateway.sh) and taskset (util-linux).
# Results in bench-results/runtime-<UTC time>/. Settings: CORES ["1 2"], DURATION [10],
# ROUNDS [3], CONCURRENCY [32], CALLGRIND [1] (0 skips part 1), ports 9351-9354,
# BENCH_LOCK [/tmp/bench.lock].
set -euo pipefail
cd "$(dirname "$0")/.."

CORES=${CORES:-1 2}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-32}
CALLGRIND=${CALLGRIND:-1}
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
bench_init runtime
export PATH="$HOME/.cargo/bin:$PATH"

log "building the gateway, the mock and the forwarder (release)"
cargo build --release --quiet -p orchestrator-server -p orchestrator-mock
cargo build --release --quiet -p orchestrator-bench --bin orchestrator-forwarder

plain='{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}]}'
streamed='{"model":"mock","stream":true,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}]}'
# runtime MODE THREADS: the [runtime] section; per-core threads are pinned.
runtime() {
    local pin=false
    [ "$1" = per_core ] && pin=true
    printf '[runtime]\nmode = "%s"\nthreads = %s\npin = %s\n' "$1" "$2" "$pin"
}

if [ "$CALLGRIND" != 0 ]; then
    log "instructions per request"
    for mode in work_stealing per_core; do
        for kind in plain streamed; do
            body=$plain
            [ "$kind" = streamed ] && body=$streamed
            forwarder=()
            [ "$mode" = work_stealing ] && forwarder=(FORWARDER_BIN="$bin/orchestrator-forwarder")
            env "${forwarder[@]}" LOAD_BODY="$body" GATEWAY_EXTRA="$(runtime "$mode" 2)" \
                bash scripts/callgrind-gateway.sh "$bin/orchestrator" \
                | sed "s/^gateway:/$mode, $kind:/; s/^forwarder:/forwarder, $kind:/" | tee -a "$out/callgrind.txt"
        done
    done
fi

"$bin/mock-upstream" --listen 127.0.0.1:9351 --model mock >"$out/mock.log" 2>&1 &
pids+=($!)
# start NAME PORT CORES CMD...: CMD confined to cores 0..CORES-1, until it answers on PORT.
start() {
    local name=$1 port=$2 cores=$3
    shift 3
    taskset -c "0-$((cores - 1))" "$@" >"$out/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && return
        sleep 0.1
    done
    echo "$name did not start: $(tail -3 "$out/$name.log")" >&2
    exit 1
}
# stop_all_but_mock: ends every server started after the mock.
stop_all_but_mock() {
    local keep=${pids[0]}
    for pid in "${pids[@]:1}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=("$keep")
}
gateway_config() { # gateway_config MODE THREADS PORT
    printf '[server]\nlisten = "127.0.0.1:%s"\n[[backends]]\nkind = "openai"\nname = "mock"\nbase_url = "http://127.0.0.1:9351/v1"\n[[models]]\nname = "mock"\nbackends = ["mock"]\n[pipeline]\nshards = %s\n%s\n' \
        "$3" "$2" "$(runtime "$1" "$2")"
}

exec 9>"$BENCH_LOCK"
flock 9
printf '| cores | path | kind | round | req/s |\n|---|---|---|---|---:|\n' >"$out/rounds.md"
for n in $CORES; do
    log "$n core(s)"
    start forwarder-$n 9352 "$n" "$bin/orchestrator-forwarder" --listen 127.0.0.1:9352 --upstream http://127.0.0.1:9351
    for mode in work_stealing per_core; do
        port=9353
        [ "$mode" = per_core ] && port=9354
        gateway_config "$mode" "$n" "$port" >"$out/$mode-$n.toml"
        RUST_LOG=warn start "$mode-$n" "$port" "$n" "$bin/orchestrator" serve --config "$out/$mode-$n.toml"
    done
    for round in $(seq "$ROUNDS"); do
        for target in mock:9351 forwarder:9352 work_stealing:9353 per_core:9354; do
            name=${target%%:*} port=${target##*:}
            for kind in plain streamed; do
                body=$plain
                [ "$kind" = streamed ] && body=$streamed
                oha -z "${DURATION}s" -c "$CONCURRENCY" --no-tui --output-format json -m POST \
                    -H 'content-type: application/json' -d "$body" \
                    "http://127.0.0.1:$port/v1/chat/completions" >"$out/$name-$n-$kind-$round.json"
                python3 - "$out/$name-$n-$kind-$round.json" "$n" "$name" "$kind" "$round" <<'PY' | tee -a "$out/rounds.md"
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["statusCodeDistribution"].get("200", 0)
assert ok == sum(r["statusCodeDistribution"].values()), f"{sys.argv[1]}: not every answer was 200"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {r['summary']['requestsPerSec']:.0f} |")
PY
            done
        done
    done
    stop_all_but_mock
done

# Medians over the rounds, the ratio to the forwarder, and the scaling from the first core count.
python3 - "$out" $CORES <<'PY' | tee "$out/summary.md"
import glob, json, statistics, sys
out, cores = sys.argv[1], sys.argv[2:]
def rps(name, n, kind):
    runs = [json.load(open(f))["summary"]["requestsPerSec"] for f in glob.glob(f"{out}/{name}-{n}-{kind}-*.json")]
    return statistics.median(runs)
print("| kind | cores | mock alone | forwarder | work-stealing | x forwarder | per-core | x forwarder |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for kind in ("plain", "streamed"):
    for n in cores:
        m, f, w, p = (rps(x, n, kind) for x in ("mock", "forwarder", "work_stealing", "per_core"))
        print(f"| {kind} | {n} | {m:.0f} | {f:.0f} | {w:.0f} | {w / f:.2f} | {p:.0f} | {p / f:.2f} |")
print()
print("| kind | mode | scaling " + " | ".join(f"{cores[0]} -> {n}" for n in cores[1:]) + " |")
print("|---|---|" + "---:|" * (len(cores) - 1))
for kind in ("plain", "streamed"):
    for name in ("forwarder", "work_stealing", "per_core"):
        base = rps(name, cores[0], kind)
        print(f"| {kind} | {name} | " + " | ".join(f"{rps(name, n, kind) / base:.2f}x" for n in cores[1:]) + " |")
PY
log "results in $out"
