#!/usr/bin/env bash
# What the API shapes and the response cache cost: instructions per request for the same prompt
# through `/v1/chat/completions` and Anthropic's `/v1/messages`, and for an answer from the cache;
# then the cache's throughput and latency against the model's path, in one sitting.
#
#   bash scripts/bench-apis.sh
#
# 1. Instructions per request (scripts/callgrind-gateway.sh): chat completions, messages, a chat
#    completion answered from the cache (temperature 0, the model with `cache`).
# 2. c=32 for DURATION seconds with oha, ROUNDS rounds alternating: the same deterministic request
#    through the gateway to the mock, and to a gateway whose model keeps answers (all hits after
#    the first).
#
# Builds in release. Needs valgrind and oha (see callgrind-gateway.sh). Results in
# bench-results/apis-<UTC time>/. Settings: DURATION [10], ROUNDS [3], ports 9341-9343,
# BENCH_LOCK [/tmp/bench.lock].
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
bench_init apis

log "building the gateway and the mock (release)"
cargo build --release --quiet -p orchestrator-server -p orchestrator-mock

# Not deterministic (no temperature): identical requests in flight would otherwise share one
# upstream call (dedup), which is not what the comparison is about.
chat='{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}]}'
messages='{"model":"mock","max_tokens":64,"system":"You are a helpful assistant.","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
# The cache keeps deterministic answers.
kept='{"model":"mock","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}]}'
cache='cache = { ttl_s = 3600 }'

log "instructions per request"
LOAD_BODY="$chat" bash scripts/callgrind-gateway.sh "$bin/orchestrator" | sed 's/^gateway:/chat completions:/' | tee "$out/callgrind.txt"
LOAD_BODY="$messages" LOAD_PATH=/v1/messages bash scripts/callgrind-gateway.sh "$bin/orchestrator" \
    | sed 's/^gateway:/messages:/' | tee -a "$out/callgrind.txt"
LOAD_BODY="$kept" MODEL_EXTRA="$cache" bash scripts/callgrind-gateway.sh "$bin/orchestrator" \
    | sed 's/^gateway:/cache hit:/' | tee -a "$out/callgrind.txt"

log "throughput and latency at c=32: the model's path against the cache"
"$bin/mock-upstream" --listen 127.0.0.1:9341 --model mock >"$out/mock.log" 2>&1 &
pids+=($!)
gateway() { # gateway NAME PORT [MODEL_EXTRA]
    printf '[server]\nlisten = "127.0.0.1:%s"\n[[backends]]\nkind = "openai"\nname = "mock"\nbase_url = "http://127.0.0.1:9341/v1"\n[[models]]\nname = "mock"\nbackends = ["mock"]\ndedup = false\n%s\n' \
        "$2" "${3:-}" >"$out/$1.toml"
    RUST_LOG=warn "$bin/orchestrator" serve --config "$out/$1.toml" >"$out/$1.log" 2>&1 &
    pids+=($!)
    wait_ready "$2" "$1"
}
gateway model 9342
gateway cached 9343 "$cache"
exec 9>"$BENCH_LOCK"
flock 9
printf '| round | path | req/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|\n' | tee "$out/throughput.md"
for round in $(seq "$ROUNDS"); do
    for target in model:9342 cached:9343; do
        name=${target%%:*} port=${target##*:}
        oha -z "${DURATION}s" -c 32 --no-tui --output-format json -m POST -H 'content-type: application/json' \
            -d "$kept" "http://127.0.0.1:$port/v1/chat/completions" >"$out/$name-$round.json"
        python3 - "$out/$name-$round.json" "$round" "$name" <<'PY' | tee -a "$out/throughput.md"
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['summary']['requestsPerSec']:.0f} | {p['p50'] * 1000:.2f} | {p['p99'] * 1000:.2f} |")
PY
    done
done
log "results in $out"
