#!/usr/bin/env bash
# Instructions per request of the gateway's own process (valgrind's callgrind): a figure that,
# unlike req/s on a shared machine, moves only with the code, so a change of a few percent shows.
#
#   bash scripts/callgrind-gateway.sh [ORCHESTRATOR_BIN]
#
# Starts the mock upstream (`mock-upstream`, built beside the gateway) natively and the gateway
# under callgrind (JSON logs with the access line on, as in the load harness), sends WARMUP
# requests at concurrency 32 with oha, zeroes the counters, sends REQUESTS more, and prints the gateway's instructions per request (user
# space; the kernel's share is not counted). The profile is kept in bench-results/callgrind-<UTC
# time>/ for `callgrind_annotate --inclusive=yes`.
#
# Needs valgrind (Debian's package) and oha (`cargo install oha --locked`). The binary defaults
# to target/release/orchestrator (`cargo build --release -p orchestrator-server -p orchestrator-mock`).
# Settings: REQUESTS [2000], WARMUP [500], CONCURRENCY [32], MOCK_PORT [9301], GATEWAY_PORT [9302].
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${1:-target/release/orchestrator}
requests=${REQUESTS:-2000}
warmup=${WARMUP:-500}
concurrency=${CONCURRENCY:-32}
mock_port=${MOCK_PORT:-9301}
gateway_port=${GATEWAY_PORT:-9302}
for tool in valgrind callgrind_control callgrind_annotate oha; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see the header of $0)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release -p orchestrator-server" >&2; exit 1; }

out="bench-results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

"$(dirname "$bin")/mock-upstream" --listen "127.0.0.1:$mock_port" --model mock >"$out/mock.log" 2>&1 &
pids+=($!)
cat >"$out/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$gateway_port"
[[backends]]
kind = "openai"
name = "mock"
base_url = "http://127.0.0.1:$mock_port/v1"
[[models]]
name = "mock"
backends = ["mock"]
EOF
RUST_LOG=warn,orchestrator=info,orchestrator_server=info valgrind --tool=callgrind \
    --callgrind-out-file="$out/callgrind.out.%p" \
    "$bin" serve --log-format json --config "$out/gateway.toml" >"$out/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$gateway_port/readyz" >/dev/null && break
    sleep 1
done

body='{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"stream":false}'
load() {
    oha -n "$1" -c "$concurrency" --no-tui -m POST -H 'content-type: application/json' -d "$body" \
        "http://127.0.0.1:$gateway_port/v1/chat/completions"
}
load "$warmup" >/dev/null
callgrind_control -z "$gateway" >/dev/null 2>&1
load "$requests" >"$out/oha.txt"
callgrind_control -d "$gateway" >/dev/null 2>&1
grep -q "\[200\] $requests responses" "$out/oha.txt" || { echo "not every request got a 200:" >&2; cat "$out/oha.txt" >&2; exit 1; }

# The dump after zeroing is the file with the ".1" suffix.
profile=$(ls "$out"/callgrind.out.*.1)
total=$(callgrind_annotate "$profile" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "instructions per request: $((total / requests)) ($requests requests at concurrency $concurrency; profile $profile)"
