#!/usr/bin/env bash
# Instructions per request of the gateway's own process (valgrind's callgrind): a figure that,
# unlike req/s on a shared machine, moves only with the code, so a change of a few percent shows.
#
#   bash scripts/callgrind-gateway.sh [ORCHESTRATOR_BIN]
#
# Starts the mock upstream (`mock-upstream`, built beside the gateway) natively and the gateway
# under callgrind (JSON logs with the access line on, as in the load harness), sends WARMUP
# requests at concurrency 32 with oha, zeroes the counters, sends REQUESTS more, and prints the gateway's instructions per request (user
# space; the kernel's share is not counted). With FORWARDER_BIN set, it then measures the bare
# forwarder (`orchestrator-forwarder`) the same way in front of the same mock: the HTTP work
# alone, the floor to read the gateway's figure against. The profiles are kept in
# bench-results/callgrind-<UTC time>/ for `callgrind_annotate --inclusive=yes`.
#
# Needs valgrind (Debian's package) and oha (`cargo install oha --locked`). The binary defaults
# to target/release/orchestrator (`cargo build --release -p orchestrator-server -p orchestrator-mock`).
# Settings: REQUESTS [2000], WARMUP [500], CONCURRENCY [32], MOCK_PORT [9301], GATEWAY_PORT [9302],
# FORWARDER_BIN [unset: the forwarder is not measured], FORWARDER_PORT [9303],
# GATEWAY_EXTRA [empty]: TOML added to the gateway's config (an API key, [cluster]),
# LOAD_HEADER [empty]: a header sent with every request (`authorization: Bearer ...`),
# BENCH_LOCK [/tmp/bench.lock]: held (flock) while measuring; the counts do not need it, but a
# process under callgrind keeps a core busy and would slow another benchmark's run.
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${1:-target/release/orchestrator}
requests=${REQUESTS:-2000}
warmup=${WARMUP:-500}
concurrency=${CONCURRENCY:-32}
mock_port=${MOCK_PORT:-9301}
gateway_port=${GATEWAY_PORT:-9302}
forwarder=${FORWARDER_BIN:-}
forwarder_port=${FORWARDER_PORT:-9303}
lock=${BENCH_LOCK:-/tmp/bench.lock}
for tool in valgrind callgrind_control callgrind_annotate oha flock; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see the header of $0)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release -p orchestrator-server" >&2; exit 1; }
[ -z "$forwarder" ] || [ -x "$forwarder" ] || {
    echo "no forwarder at $forwarder: cargo build --release -p orchestrator-bench" >&2
    exit 1
}

out="bench-results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

echo "== waiting for $lock (held while measuring)" >&2
exec 9>"$lock"
flock 9

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
${GATEWAY_EXTRA:-}
EOF
header=()
[ -z "${LOAD_HEADER:-}" ] || header=(-H "$LOAD_HEADER")

body='{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"stream":false}'

# measure NAME PORT READY_PATH CMD...: runs CMD under callgrind, loads it, prints its
# instructions per request.
measure() {
    local name=$1 port=$2 ready=$3
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$out/$name.callgrind.out.%p" "$@" \
        >"$out/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$port$ready" >/dev/null && break
        sleep 1
    done
    load() {
        oha -n "$1" -c "$concurrency" --no-tui -m POST -H 'content-type: application/json' "${header[@]}" -d "$body" \
            "http://127.0.0.1:$port/v1/chat/completions"
    }
    load "$warmup" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$requests" >"$out/$name.oha.txt"
    callgrind_control -d "$pid" >/dev/null 2>&1
    grep -q "\[200\] $requests responses" "$out/$name.oha.txt" || {
        echo "$name: not every request got a 200:" >&2
        cat "$out/$name.oha.txt" >&2
        exit 1
    }
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # The dump after zeroing is the file with the ".1" suffix.
    local profile total
    profile=$(ls "$out/$name.callgrind.out."*.1)
    total=$(callgrind_annotate "$profile" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "$name: instructions per request: $((total / requests)) ($requests requests at concurrency $concurrency; profile $profile)"
}

RUST_LOG=warn,orchestrator=info,orchestrator_server=info measure gateway "$gateway_port" /readyz \
    "$bin" serve --log-format json --config "$out/gateway.toml"
if [ -n "$forwarder" ]; then
    measure forwarder "$forwarder_port" /v1/models \
        "$forwarder" --listen "127.0.0.1:$forwarder_port" --upstream "http://127.0.0.1:$mock_port"
fi
