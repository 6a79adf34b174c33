#!/usr/bin/env bash
# What remote workers cost and give: a model served through an HTTP backend against the same model
# through `orchestrator worker`, over NATS JetStream and over gRPC, in one run.
#
#   bash scripts/bench-workers.sh
#
# 1. Instructions per request (callgrind, scripts/lib/callgrind.sh): the gateway with the HTTP
#    backend (the direct path); then, through one worker over NATS and through one over gRPC, the
#    gateway and the worker each measured while the other runs natively (nats-server's own work
#    is not counted).
# 2. Latency at RATE req/s open loop (orchestrator-bench --mode rate), streamed and not, REPEATS
#    runs: the upstream alone, the gateway with the HTTP backend, the gateway through one worker
#    over NATS, and through one over gRPC.
# 3. Jobs/s one worker takes with an instant model (echo): closed loop at concurrency 64.
# 4. Scaling: model servers of fixed capacity (SLOTS jobs at once, SCALE_LATENCY_MS per answer:
#    the worker's slots, as llama-server's -np) behind 1, 2 and 3 workers, closed loop at
#    concurrency 48, the gateway's config unchanged.
#
# Builds in release and installs nats-server (scripts/setup-nats.sh). Results in
# bench-results/workers-<UTC time>/.
# Settings: RATE [1000], DURATION [10] seconds, WARMUP [2], REPEATS [3], REQUESTS [2000]
# (callgrind), SLOTS [4], SCALE_LATENCY_MS [50], ports 9330-9343, BENCH_LOCK [/tmp/bench.lock].
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-1000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-3}
SLOTS=${SLOTS:-4}
SCALE_LATENCY_MS=${SCALE_LATENCY_MS:-50}
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
bench_init workers

log "building the gateway, the mock and the harness (release)"
cargo build --release --quiet -p orchestrator-server -p orchestrator-mock -p orchestrator-bench
bash scripts/setup-nats.sh >/dev/null

nats-server -js -a 127.0.0.1 -p 9330 -sd "$out/nats" >"$out/nats.log" 2>&1 &
pids+=($!)
nats="nats://127.0.0.1:9330"
"$bin/mock-upstream" --listen 127.0.0.1:9331 --model mock >"$out/mock.log" 2>&1 &
pids+=($!)
"$bin/mock-upstream" --listen 127.0.0.1:9332 --model mock --latency-ms "$SCALE_LATENCY_MS" >"$out/mock-slow.log" 2>&1 &
pids+=($!)

http_backend() { # http_backend MOCK_PORT: model `mock` on the mock at that port
    printf '[[backends]]\nkind = "openai"\nname = "mock"\nbase_url = "http://127.0.0.1:%s/v1"\n[[models]]\nname = "mock"\nbackends = ["mock"]\n' "$1"
}
cluster_backend='[[backends]]
kind = "cluster"
name = "workers"
[[models]]
name = "mock"
backends = ["workers"]'
cluster() { printf '[cluster]\nnats_url = "%s"\nnode_name = "%s"\n' "$nats" "$1"; }
start() { # start NAME PORT COMMAND CONFIG: a gateway (serve) or a worker, natively
    printf '[server]\nlisten = "127.0.0.1:%s"\n%s\n' "$2" "$4" >"$out/$1.toml"
    RUST_LOG=warn "$bin/orchestrator" "$3" --config "$out/$1.toml" >"$out/$1.log" 2>&1 &
    pids+=($!)
    eval "pid_${1//-/_}=$!"
    wait_ready "$2" "$1"
}
stop() { # stop NAME: SIGTERM, and wait until it has drained and exited
    local pid_var="pid_${1//-/_}"
    kill "${!pid_var}"
    wait "${!pid_var}" 2>/dev/null || true
}
worker_config() { # worker_config NAME SLOTS BACKEND
    printf '[worker]\nslots = %s\n%s\n%s\n' "$2" "$3" "$(cluster "$1")"
}
grpc_worker_config() { # grpc_worker_config SLOTS BACKEND GRPC_PORT: a worker serving gRPC only
    printf '[worker]\nslots = %s\n[worker.grpc]\nlisten = "127.0.0.1:%s"\n%s\n' "$1" "$3" "$2"
}
grpc_backend() { # grpc_backend GRPC_PORT: model `mock` on the gRPC worker at that port
    printf '[[backends]]\nkind = "grpc"\nname = "worker"\nurl = "http://127.0.0.1:%s"\nhealth_check = { interval_ms = 0 }\n[[models]]\nname = "mock"\nbackends = ["worker"]\n' "$1"
}

log "instructions per request"
requests=${REQUESTS:-2000} warmup=500 concurrency=32 header=()
body='{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}],"stream":false}'
# shellcheck source=lib/callgrind.sh
source scripts/lib/callgrind.sh
exec 9>"$BENCH_LOCK"
flock 9
printf '[server]\nlisten = "127.0.0.1:9333"\n%s\n' "$(http_backend 9331)" >"$out/cg-direct.toml"
callgrind_measure direct http://127.0.0.1:9333/readyz http://127.0.0.1:9333/v1/chat/completions \
    "$bin/orchestrator" serve --config "$out/cg-direct.toml" | tee "$out/callgrind.txt"
start cg_worker 9334 worker "$(worker_config cg_worker 64 "$(http_backend 9331)")"
printf '[server]\nlisten = "127.0.0.1:9335"\n%s\n%s\n' "$cluster_backend" "$(cluster cg-gateway)" >"$out/cg-gateway.toml"
callgrind_measure via-worker-gateway http://127.0.0.1:9335/readyz http://127.0.0.1:9335/v1/chat/completions \
    "$bin/orchestrator" serve --config "$out/cg-gateway.toml" | tee -a "$out/callgrind.txt"
stop cg_worker
start cg_gateway2 9335 serve "$cluster_backend
$(cluster cg_gateway2)"
printf '[server]\nlisten = "127.0.0.1:9334"\n%s\n' "$(worker_config cg-worker2 64 "$(http_backend 9331)")" >"$out/cg-worker2.toml"
callgrind_measure via-worker-worker http://127.0.0.1:9334/readyz http://127.0.0.1:9335/v1/chat/completions \
    "$bin/orchestrator" worker --config "$out/cg-worker2.toml" | tee -a "$out/callgrind.txt"
stop cg_gateway2
start cg_grpc_worker 9340 worker "$(grpc_worker_config 64 "$(http_backend 9331)" 9341)"
printf '[server]\nlisten = "127.0.0.1:9342"\n%s\n' "$(grpc_backend 9341)" >"$out/cg-grpc-gateway.toml"
callgrind_measure via-grpc-gateway http://127.0.0.1:9342/readyz http://127.0.0.1:9342/v1/chat/completions \
    "$bin/orchestrator" serve --config "$out/cg-grpc-gateway.toml" | tee -a "$out/callgrind.txt"
stop cg_grpc_worker
start cg_grpc_gateway 9342 serve "$(grpc_backend 9341)"
printf '[server]\nlisten = "127.0.0.1:9340"\n%s\n' "$(grpc_worker_config 64 "$(http_backend 9331)" 9341)" >"$out/cg-grpc-worker.toml"
callgrind_measure via-grpc-worker http://127.0.0.1:9340/readyz http://127.0.0.1:9342/v1/chat/completions \
    "$bin/orchestrator" worker --config "$out/cg-grpc-worker.toml" | tee -a "$out/callgrind.txt"
stop cg_grpc_gateway
flock -u 9

log "latency at $RATE req/s"
start direct 9336 serve "$(http_backend 9331)"
start gateway 9337 serve "$cluster_backend
$(cluster gateway)"
start worker 9338 worker "$(worker_config worker 256 "$(http_backend 9331)")"
start grpc_worker 9340 worker "$(grpc_worker_config 256 "$(http_backend 9331)" 9341)"
start grpc_gateway 9342 serve "$(grpc_backend 9341)"
for stream in "" --stream; do
    for run in $(seq "$REPEATS"); do
        log "run $run of $REPEATS ${stream:-(not streamed)}"
        "$bin/orchestrator-bench" --mode rate --rates "$RATE" --duration "${DURATION}s" --warmup "${WARMUP}s" $stream \
            --upstream-url http://127.0.0.1:9331 \
            --gateway-url "http-backend=http://127.0.0.1:9336,nats-worker=http://127.0.0.1:9337,grpc-worker=http://127.0.0.1:9342" \
            --lock "$BENCH_LOCK" --no-chart --out "$out/latency${stream}-$run" >/dev/null
        grep -E '^\|' "$out/latency${stream}-$run/summary.md"
    done
done
stop worker
stop grpc_gateway
stop grpc_worker

log "jobs/s of one worker with an instant model"
start echo_worker 9338 worker "$(worker_config echo_worker 64 '[[backends]]
kind = "echo"
name = "echo"
[[models]]
name = "mock"
backends = ["echo"]')"
"$bin/orchestrator-bench" --mode concurrency --concurrency 64 --duration "${DURATION}s" --warmup "${WARMUP}s" \
    --upstream-url http://127.0.0.1:9331 --gateway-url "echo-worker=http://127.0.0.1:9337" \
    --lock "$BENCH_LOCK" --no-chart --out "$out/jobs" >/dev/null
grep -E '^\|' "$out/jobs/summary.md"
stop echo_worker

log "scaling: $SLOTS slots of $SCALE_LATENCY_MS ms per worker, 1 to 3 workers"
for n in 1 2 3; do
    start "scale-$n" $((9338 + n - 1)) worker "$(worker_config "scale-$n" "$SLOTS" "$(http_backend 9332)")"
    sleep 3 # the gateway and the workers see the new member within a heartbeat or two
    "$bin/orchestrator-bench" --mode concurrency --concurrency 48 --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --upstream-url http://127.0.0.1:9332 --gateway-url "workers-$n=http://127.0.0.1:9337" \
        --lock "$BENCH_LOCK" --no-chart --out "$out/scale-$n" >/dev/null
    grep -E "workers-$n" "$out/scale-$n/summary.md"
done
log "results in $out"
