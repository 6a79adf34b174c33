#!/usr/bin/env bash
# What observability costs the gateway (BENCHMARKS.md, "Tracing and the stats feed"):
#
# 1. instructions per request (callgrind, scripts/callgrind-gateway.sh) with tracing off, with
#    [telemetry.otlp] at sampling_ratio 0.01, and at 1.0, exporting over OTLP/HTTP to a sink that
#    accepts everything (scripts/lib/otlp_sink.py);
# 2. the stats feed: the gateway's CPU time per second while idle with no viewer and with VIEWERS
#    viewers of /admin/stats/stream (curl -N), over SECONDS each, read from /proc.
#
#   bash scripts/bench-observability.sh [ORCHESTRATOR_BIN]
#
# Needs what callgrind-gateway.sh needs (valgrind, oha) and python3. Settings: REQUESTS [2000],
# VIEWERS [10], SECONDS_EACH [60], SINK_PORT [9311], GATEWAY_PORT [9312], BEFORE_BIN [unset]: an
# earlier build's binary (with mock-upstream beside it), measured first the same way, tracing off.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/orchestrator}
sink_port=${SINK_PORT:-9311}
gateway_port=${GATEWAY_PORT:-9312}
viewers=${VIEWERS:-10}
seconds=${SECONDS_EACH:-60}
export REQUESTS=${REQUESTS:-2000}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

python3 scripts/lib/otlp_sink.py "$sink_port" &
pids+=($!)
otlp() {
    printf '[telemetry.otlp]\nendpoint = "http://127.0.0.1:%s"\nprotocol = "http"\nsampling_ratio = %s\n' \
        "$sink_port" "$1"
}
if [ -n "${BEFORE_BIN:-}" ]; then
    echo "== the earlier build $BEFORE_BIN"
    bash scripts/callgrind-gateway.sh "$BEFORE_BIN"
fi
echo "== tracing off"
bash scripts/callgrind-gateway.sh "$bin"
for ratio in 0.01 1.0; do
    echo "== tracing on, sampling_ratio = $ratio"
    GATEWAY_EXTRA="$(otlp "$ratio")" bash scripts/callgrind-gateway.sh "$bin"
done

echo "== the stats feed: CPU of an idle gateway, no viewer and $viewers viewers, ${seconds} s each"
config=$(mktemp)
printf '[server]\nlisten = "127.0.0.1:%s"\n[[backends]]\nkind = "echo"\nname = "echo"\n[[models]]\nname = "echo"\nbackends = ["echo"]\n' \
    "$gateway_port" >"$config"
RUST_LOG=warn "$bin" serve --config "$config" >/dev/null 2>&1 &
gateway=$!
pids+=("$gateway")
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$gateway_port/readyz" >/dev/null && break
    sleep 0.1
done
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$gateway/stat"; }
measure() {
    local before after
    before=$(cpu)
    sleep "$seconds"
    after=$(cpu)
    echo "$1: $(( (after - before) * 1000 / ticks )) ms of CPU in ${seconds} s"
}
measure "no viewer"
for _ in $(seq "$viewers"); do
    curl -sN "http://127.0.0.1:$gateway_port/admin/stats/stream" >/dev/null &
    pids+=($!)
done
sleep 2
measure "$viewers viewers"
