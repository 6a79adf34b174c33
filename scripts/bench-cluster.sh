#!/usr/bin/env bash
# What cluster mode costs: one node alone, the same node in cluster mode, and three nodes in one
# cluster, in front of one mock upstream. Every request carries an API key with a rate limit, a
# tokens-per-minute limit and a token budget (all far above the load), so the limits' path runs
# on every request, and in cluster mode the shared buckets' leases with it.
#
#   bash scripts/bench-cluster.sh
#
# 1. Instructions per request (callgrind, scripts/callgrind-gateway.sh): the node alone, then the
#    node in cluster mode.
# 2. Latency at RATE req/s open loop (orchestrator-bench --mode rate), REPEATS runs: the upstream
#    alone, the node alone, one node of the cluster, and the three nodes taken in turn.
#
# Builds the gateway, the mock and the harness in release and installs nats-server
# (scripts/setup-nats.sh). Results in bench-results/cluster-<UTC time>/.
# Settings: RATE [2000], DURATION [10] seconds, WARMUP [2], REPEATS [3], REQUESTS [2000] (callgrind),
# NATS_PORT [9320], ports 9321-9325 for the mock and the nodes, BENCH_LOCK [/tmp/bench.lock].
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-2000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-3}
NATS_PORT=${NATS_PORT:-9320}
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
bench_init cluster

log "building the gateway, the mock and the harness (release)"
cargo build --release --quiet -p orchestrator-server -p orchestrator-mock -p orchestrator-bench
bash scripts/setup-nats.sh >/dev/null

nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$out/nats" >"$out/nats.log" 2>&1 &
pids+=($!)
nats="nats://127.0.0.1:$NATS_PORT"

key_sha=$(printf %s sk-bench | sha256sum | cut -d' ' -f1)
key="[[auth.keys]]
name = \"bench\"
sha256 = \"$key_sha\"
rate_limit = { requests_per_second = 1000000, tokens_per_minute = 4000000000, token_budget = 1000000000000 }"
cluster() { printf '[cluster]\nnats_url = "%s"\nnode_name = "%s"\n' "$nats" "$1"; }

log "instructions per request: the node alone"
GATEWAY_EXTRA="$key" LOAD_HEADER="authorization: Bearer sk-bench" \
    bash scripts/callgrind-gateway.sh "$bin/orchestrator" | sed 's/^gateway:/alone:/' | tee "$out/callgrind.txt"
log "instructions per request: the node in cluster mode"
GATEWAY_EXTRA="$key
$(cluster callgrind)" LOAD_HEADER="authorization: Bearer sk-bench" \
    bash scripts/callgrind-gateway.sh "$bin/orchestrator" | sed 's/^gateway:/cluster:/' | tee -a "$out/callgrind.txt"

log "latency at $RATE req/s: starting the mock and four nodes (one alone, three in a cluster)"
"$bin/mock-upstream" --listen 127.0.0.1:9321 --model mock >"$out/mock.log" 2>&1 &
pids+=($!)
node() { # node NAME PORT [cluster]
    local config="$out/$1.toml"
    printf '[server]\nlisten = "127.0.0.1:%s"\n[[backends]]\nkind = "openai"\nname = "mock"\nbase_url = "http://127.0.0.1:9321/v1"\n[[models]]\nname = "mock"\nbackends = ["mock"]\n%s\n' \
        "$2" "$key" >"$config"
    [ -z "${3:-}" ] || cluster "$1" >>"$config"
    RUST_LOG=warn "$bin/orchestrator" serve --config "$config" >"$out/$1.log" 2>&1 &
    pids+=($!)
    wait_ready "$2" "$1"
}
node alone 9322
node a 9323 cluster
node b 9324 cluster
node c 9325 cluster
for run in $(seq "$REPEATS"); do
    log "run $run of $REPEATS"
    "$bin/orchestrator-bench" --mode rate --rates "$RATE" --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --upstream-url http://127.0.0.1:9321 \
        --gateway-url "alone=http://127.0.0.1:9322,cluster-node=http://127.0.0.1:9323,three-nodes=http://127.0.0.1:9323+http://127.0.0.1:9324+http://127.0.0.1:9325" \
        --header "authorization: Bearer sk-bench" --lock "$BENCH_LOCK" --no-chart --out "$out/run-$run" >/dev/null
    grep -E '^\|' "$out/run-$run/summary.md" || cat "$out/run-$run"/*.md
done
log "results in $out"
