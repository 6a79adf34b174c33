#!/usr/bin/env bash
# What the API shapes and the response cache cost: instructions per request for the same prompt
# through `/v1/chat/completions`, Anthropic's `/v1/messages` and OpenAI's `/v1/responses`, and for
# an answer from the cache; then the cache's throughput and latency against the model's path, and
# embedding batches a second through the gateway against the upstream alone, in one sitting.
#
#   bash scripts/bench-apis.sh
#
# 1. Instructions per request (scripts/callgrind-gateway.sh): chat completions, messages,
#    responses (not stored, then stored in a redb file), a chat completion answered from the cache
#    (temperature 0, the model with `cache`).
# 2. c=32 for DURATION seconds with oha, ROUNDS rounds alternating: the same deterministic request
#    through the gateway to the mock, and to a gateway whose model keeps answers (all hits after
#    the first).
# 3. Embeddings: CLIENTS oha processes, one request in flight each, every one with its own 16
#    inputs (so that no two requests in flight share an input, which the gateway would embed
#    once), for DURATION seconds, ROUNDS rounds alternating: to the mock's /v1/embeddings, and
#    through a gateway whose model is `kind = "embedding"` (one upstream batch a request).
#
# Builds in release. Needs valgrind and oha (see callgrind-gateway.sh). Results in
# bench-results/apis-<UTC time>/. Settings: DURATION [10], ROUNDS [3], CLIENTS [8], ports 9341-9344,
# BENCH_LOCK [/tmp/bench.lock].
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
bench_init apis

log "building the gateway and the mock (release)"
cargo build --release --quiet -p orchestrator-server -p orchestrator-mock

# Not deterministic (no temperature): identical requests in flight would otherwise share one
# upstream call (dedup), which is not what the comparison is about.
chat='{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}]}'
messages='{"model":"mock","max_tokens":64,"system":"You are a helpful assistant.","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
responses='{"model":"mock","instructions":"You are a helpful assistant.","input":"Say hello to the benchmark."}'
# The cache keeps deterministic answers.
kept='{"model":"mock","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}]}'
cache='cache = { ttl_s = 3600 }'

log "instructions per request"
LOAD_BODY="$chat" bash scripts/callgrind-gateway.sh "$bin/orchestrator" | sed 's/^gateway:/chat completions:/' | tee "$out/callgrind.txt"
LOAD_BODY="$messages" LOAD_PATH=/v1/messages bash scripts/callgrind-gateway.sh "$bin/orchestrator" \
    | sed 's/^gateway:/messages:/' | tee -a "$out/callgrind.txt"
LOAD_BODY="$responses" LOAD_PATH=/v1/responses bash scripts/callgrind-gateway.sh "$bin/orchestrator" \
    | sed 's/^gateway:/responses:/' | tee -a "$out/callgrind.txt"
LOAD_BODY="$responses" LOAD_PATH=/v1/responses GATEWAY_EXTRA="[responses]
path = \"$out/responses.redb\"" bash scripts/callgrind-gateway.sh "$bin/orchestrator" \
    | sed 's/^gateway:/responses, stored:/' | tee -a "$out/callgrind.txt"
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
gateway embed 9344 'kind = "embedding"'
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

log "embeddings: $CLIENTS clients, one request of 16 inputs in flight each"
printf '| round | path | requests (batches)/s | inputs/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|---:|\n' | tee "$out/embeddings.md"
for round in $(seq "$ROUNDS"); do
    for target in mock:9341 gateway:9344; do
        name=${target%%:*} port=${target##*:}
        clients=()
        for client in $(seq "$CLIENTS"); do
            inputs=$(python3 -c "import json,sys; print(json.dumps([f'client {sys.argv[1]} text {i} of the batch' for i in range(16)]))" "$client")
            oha -z "${DURATION}s" -c 1 --no-tui --output-format json -m POST -H 'content-type: application/json' \
                -d "{\"model\":\"mock\",\"input\":$inputs}" "http://127.0.0.1:$port/v1/embeddings" \
                >"$out/embed-$name-$round-$client.json" &
            clients+=($!)
        done
        wait "${clients[@]}"
        python3 - "$out" "$name" "$round" <<'PY' | tee -a "$out/embeddings.md"
import glob, json, statistics, sys
out, name, round_ = sys.argv[1:]
runs = [json.load(open(f)) for f in glob.glob(f"{out}/embed-{name}-{round_}-*.json")]
rps = sum(r["summary"]["requestsPerSec"] for r in runs)
p50 = statistics.median(r["latencyPercentiles"]["p50"] for r in runs) * 1000
p99 = max(r["latencyPercentiles"]["p99"] for r in runs) * 1000
print(f"| {round_} | {name} | {rps:.0f} | {rps * 16:.0f} | {p50:.2f} | {p99:.2f} |")
PY
    done
done
log "results in $out"
