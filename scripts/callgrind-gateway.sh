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
# MODEL_EXTRA [empty]: TOML added to the model's entry (`cache = { ttl_s = 600 }`),
# MOCK_ARGS [empty]: the mock's options (`--tokens-per-second 100`: tokens spaced out, as a model
# sends them, instead of back to back),
# LOAD_PATH [/v1/chat/completions] and LOAD_BODY [a short chat request]: what the load sends,
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

# shellcheck disable=SC2086 # MOCK_ARGS is a list of options
"$(dirname "$bin")/mock-upstream" --listen "127.0.0.1:$mock_port" --model mock ${MOCK_ARGS:-} >"$out/mock.log" 2>&1 &
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
${MODEL_EXTRA:-}
${GATEWAY_EXTRA:-}
EOF
header=()
[ -z "${LOAD_HEADER:-}" ] || header=(-H "$LOAD_HEADER")

body=${LOAD_BODY:-'{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"stream":false}'}
load_path=${LOAD_PATH:-/v1/chat/completions}

# shellcheck source=lib/callgrind.sh
source scripts/lib/callgrind.sh

RUST_LOG=warn,orchestrator=info,orchestrator_server=info callgrind_measure gateway \
    "http://127.0.0.1:$gateway_port/readyz" "http://127.0.0.1:$gateway_port$load_path" \
    "$bin" serve --log-format json --config "$out/gateway.toml"
if [ -n "$forwarder" ]; then
    callgrind_measure forwarder \
        "http://127.0.0.1:$forwarder_port/v1/models" "http://127.0.0.1:$forwarder_port/v1/chat/completions" \
        "$forwarder" --listen "127.0.0.1:$forwarder_port" --upstream "http://127.0.0.1:$mock_port"
fi
