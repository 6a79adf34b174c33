#!/usr/bin/env bash
# Gateway benchmark: the `orchestrator` gateway in front of the mock upstream (`mock-upstream`), compared
# with the mock upstream alone, a bare forwarding proxy and two other gateways, in one run,
# everything on this machine.
#
#   bash scripts/bench-gateway.sh
#
# From a clean clone it builds `orchestrator` and `orchestrator-forwarder` in release, installs
# the load generators if missing (wrk from Debian's packages, oha with `cargo install oha
# --locked`) and the peers (scripts/setup-portkey.sh, scripts/setup-litellm.sh), starts the mock
# upstream (no artificial latency, 16 tokens per answer), the gateway (generated config: one
# `kind = "openai"` backend pointing at the mock) and the peers, then measures, each run after a
# short warm-up:
#   (a) non-streaming POST /v1/chat/completions at concurrency 32, as fast as possible (wrk):
#       the mock alone, then through the forwarder, the gateway and each peer. The gateway's
#       throughput as a ratio to the forwarder's is the figure to compare builds by: the
#       forwarder pays the same HTTP work on the same cores, so the ratio moves far less than
#       req/s between runs;
#   (b) the mock alone and the gateway at a fixed 2,000 req/s (oha -q, latency measured from each
#       request's scheduled start, so a stall is not hidden): p50/p99/p99.9; added p99 = gateway
#       p99 - mock p99;
#   (c) streaming (SSE) at concurrency 32, the mock alone and the gateway, for information;
#   (d) the gateway's memory after all of that (VmRSS and VmHWM from /proc/PID/status).
# It prints a summary (also written as summary.md) and keeps every raw output in
# bench-results/gateway-<UTC time>/ (git-ignored). Every server is stopped on exit.
#
# Settings, from the environment (defaults in brackets):
#   DURATION [10]      seconds of each measured run      WARMUP [2]   seconds of warm-up before it
#   CONCURRENCY [32]   connections                       RATE [2000]  requests/s of run (b)
#   TOKENS [16]        completion length of the mock
#   PEERS [forwarder portkey litellm]  measured in (a) beside the gateway: `forwarder` is
#                      orchestrator-forwarder (hyper server and client, no JSON: the HTTP work
#                      alone); `portkey` is Portkey's AI gateway on Node.js; `litellm` is the
#                      LiteLLM proxy (one worker). PEERS="" measures the gateway alone.
#   RUST_LOG [info]    the gateway's log filter; `info` keeps its access log line per request on,
#                      as deployed (written to gateway.log)
#   BENCH_LOCK [/tmp/bench.lock]  held (flock) while measuring, so that benchmarks never overlap
#   ORCHESTRATOR_BIN   measure this binary instead of building one (e.g. a copy of an older
#                      build, to compare before and after a change in one session)
#   FORWARDER_BIN      the forwarder to run [target/release/orchestrator-forwarder, built if
#                      missing]; keep one forwarder for both sides of a before/after comparison
# The load generator, the mock, the gateway and the peers share the machine's cores: the figures
# describe this co-located setup, not a gateway with cores of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONCURRENCY="${CONCURRENCY:-32}"
RATE="${RATE:-2000}"
TOKENS="${TOKENS:-16}"
PEERS="${PEERS-forwarder portkey litellm}"
BENCH_LOCK="${BENCH_LOCK:-/tmp/bench.lock}"
export RUST_LOG="${RUST_LOG:-info}"
THREADS=2 # wrk threads

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export PATH="$HOME/.cargo/bin:$PATH"
BIN="${ORCHESTRATOR_BIN:-$CARGO_TARGET_DIR/release/orchestrator}"
MOCK_BIN="$CARGO_TARGET_DIR/release/mock-upstream"
FORWARDER="${FORWARDER_BIN:-$CARGO_TARGET_DIR/release/orchestrator-forwarder}"
OUT="bench-results/gateway-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

log() { printf '== %s\n' "$*" >&2; }
has_peer() { [[ " $PEERS " == *" $1 "* ]]; }
for peer in $PEERS; do
    case $peer in forwarder | portkey | litellm) ;; *) echo "unknown peer: $peer" >&2; exit 1 ;; esac
done

# ---- build and tools -------------------------------------------------------------------------
if [ -z "${ORCHESTRATOR_BIN:-}" ]; then
    log "building orchestrator (release)"
    cargo build --release --quiet --bin orchestrator
fi
log "building mock-upstream (release)"
cargo build --release --quiet --bin mock-upstream
if has_peer forwarder && [ -z "${FORWARDER_BIN:-}" ] && [ ! -x "$FORWARDER" ]; then
    log "building orchestrator-forwarder (release)"
    cargo build --release --quiet -p orchestrator-bench --bin orchestrator-forwarder
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
    log "installing wrk (Debian package)"
    as_root apt-get install -y wrk || { as_root apt-get update && as_root apt-get install -y wrk; }
fi
if ! command -v oha >/dev/null; then
    log "installing oha (cargo install oha --locked, a few minutes)"
    cargo install oha --locked
fi
for tool in curl python3 flock pgrep; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
PORTKEY_SERVER="" LITELLM=""
if has_peer portkey; then PORTKEY_SERVER=$(bash scripts/setup-portkey.sh); fi
if has_peer litellm; then LITELLM=$(bash scripts/setup-litellm.sh); fi

# ---- servers ---------------------------------------------------------------------------------
MOCK_PID="" GATEWAY_PID="" FORWARDER_PID="" PORTKEY_PID="" LITELLM_PID=""
stop() {
    for pid in $LITELLM_PID $PORTKEY_PID $FORWARDER_PID $GATEWAY_PID $MOCK_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap stop EXIT
trap 'exit 130' INT TERM

# Waits for a server's "listening" log line (JSON logs) and prints the address it bound.
bound_addr() {
    local logfile=$1 pid=$2 addr=""
    for _ in $(seq 100); do
        addr=$(grep -o '"addr":"[^"]*"' "$logfile" 2>/dev/null | head -n1 | cut -d'"' -f4 || true)
        [ -n "$addr" ] && { echo "$addr"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "the server did not start; its log:" >&2
    cat "$logfile" >&2
    return 1
}

# wait_ready URL PID SECONDS: until GET URL answers 2xx, while the process lives.
wait_ready() {
    local url=$1 pid=$2 secs=$3
    for _ in $(seq $((secs * 10))); do
        curl -sf "$url" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "no answer from $url" >&2
    return 1
}

# The forwarder and the peers cannot bind port 0 and report it: a free port, which the server
# takes a moment later.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

log "starting the mock upstream"
"$MOCK_BIN" --log-format json --listen 127.0.0.1:0 --tokens "$TOKENS" \
    >"$OUT/mock.log" 2>&1 &
MOCK_PID=$!
MOCK_ADDR=$(bound_addr "$OUT/mock.log" "$MOCK_PID")

cat >"$OUT/gateway.toml" <<EOF
# Generated by scripts/bench-gateway.sh: one OpenAI-compatible backend, the mock upstream.
[server]
listen = "127.0.0.1:0"

[[backends]]
kind = "openai"
name = "mock"
base_url = "http://$MOCK_ADDR/v1"

[[models]]
name = "mock"
backends = ["mock"]
EOF

log "starting the gateway"
"$BIN" serve --log-format json --config "$OUT/gateway.toml" >"$OUT/gateway.log" 2>&1 &
GATEWAY_PID=$!
GATEWAY_ADDR=$(bound_addr "$OUT/gateway.log" "$GATEWAY_PID")
wait_ready "http://$GATEWAY_ADDR/readyz" "$GATEWAY_PID" 10

MOCK_URL="http://$MOCK_ADDR/v1/chat/completions"
GATEWAY_URL="http://$GATEWAY_ADDR/v1/chat/completions"
# Portkey keeps no model list: each request names the provider, the upstream to use in place of
# the provider's host, and a key (which the mock does not check). One header a line.
PORTKEY_HEADERS="x-portkey-provider: openai
x-portkey-custom-host: http://$MOCK_ADDR/v1
Authorization: Bearer dummy"

if has_peer forwarder; then
    log "starting the forwarder"
    port=$(free_port)
    "$FORWARDER" --listen "127.0.0.1:$port" --upstream "http://$MOCK_ADDR" >"$OUT/forwarder.log" 2>&1 &
    FORWARDER_PID=$!
    FORWARDER_URL="http://127.0.0.1:$port/v1/chat/completions"
    wait_ready "http://127.0.0.1:$port/v1/models" "$FORWARDER_PID" 10
fi
if has_peer portkey; then
    log "starting portkey"
    port=$(free_port)
    # --headless: no web console, which would also keep every request's log in memory.
    NODE_ENV=production node "$PORTKEY_SERVER" --port="$port" --headless >"$OUT/portkey.log" 2>&1 &
    PORTKEY_PID=$!
    PORTKEY_URL="http://127.0.0.1:$port/v1/chat/completions"
    wait_ready "http://127.0.0.1:$port/" "$PORTKEY_PID" 60
fi
if has_peer litellm; then
    log "starting litellm (its start takes seconds)"
    port=$(free_port)
    cat >"$OUT/litellm.yaml" <<EOF
# Generated by scripts/bench-gateway.sh: one model, routed to the mock upstream.
model_list:
  - model_name: "mock"
    litellm_params:
      model: "openai/mock"
      api_base: "http://$MOCK_ADDR/v1"
      api_key: "dummy"
EOF
    # The local cost map: LiteLLM would otherwise fetch its model prices from the internet.
    LITELLM_LOCAL_MODEL_COST_MAP=True NO_PROXY=127.0.0.1,localhost \
        "$LITELLM" --config "$OUT/litellm.yaml" --host 127.0.0.1 --port "$port" >"$OUT/litellm.log" 2>&1 &
    LITELLM_PID=$!
    LITELLM_URL="http://127.0.0.1:$port/v1/chat/completions"
    wait_ready "http://127.0.0.1:$port/health/readiness" "$LITELLM_PID" 180
fi

BODY='{"model":"mock","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark."}]}'
STREAM_BODY="${BODY%\}},\"stream\":true}"

# sample NAME URL [HEADERS]: one request, kept as a record of what was measured; the mock's
# tokens must come back through the proxy.
sample() {
    local name=$1 url=$2 headers=${3:-} args=() h
    while IFS= read -r h; do [ -n "$h" ] && args+=(-H "$h"); done <<<"$headers"
    curl -sfS -i -H 'Content-Type: application/json' "${args[@]}" -d "$BODY" "$url" >"$OUT/sample-$name.txt"
    grep -q '"tok0' "$OUT/sample-$name.txt" || { echo "$name did not relay the mock's answer" >&2; exit 1; }
}
sample mock "$MOCK_URL"
sample gateway "$GATEWAY_URL"
if has_peer forwarder; then sample forwarder "$FORWARDER_URL"; fi
if has_peer portkey; then sample portkey "$PORTKEY_URL" "$PORTKEY_HEADERS"; fi
if has_peer litellm; then sample litellm "$LITELLM_URL"; fi

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# CPU time (user + system, clock ticks) a process and its children have used so far: a peer's
# command may run its server in a child process.
cpu_ticks() {
    local pid total=0
    for pid in $1 $(pgrep -P "$1" || true); do
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$total"
}

# wrk reports through this script: a POST with the body from $BENCH_BODY and the headers from
# $BENCH_HEADERS (one "name: value" a line), and one machine-readable RESULT line (latencies in
# microseconds).
cat >"$OUT/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end
wrk.body = os.getenv("BENCH_BODY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

# with_cpu NAME PID CMD...: records the CPU time that the proxy PID (the mock itself when the
# mock alone is measured) and the mock use during CMD, into $OUT/$name.cpu.
with_cpu() {
    local name=$1 pid=$2 p0 m0
    shift 2
    p0=$(cpu_ticks "$pid"); m0=$(cpu_ticks "$MOCK_PID")
    "$@"
    echo "proxy_ticks=$(( $(cpu_ticks "$pid") - p0 )) mock_ticks=$(( $(cpu_ticks "$MOCK_PID") - m0 ))" \
        >"$OUT/$name.cpu"
}

# wrk_run NAME PID URL BODY [HEADERS]: closed loop, as fast as the server answers.
wrk_run() {
    local name=$1 pid=$2 url=$3
    export BENCH_BODY=$4 BENCH_HEADERS=${5:-}
    log "$name: wrk -t$THREADS -c$CONCURRENCY -d${DURATION}s (after ${WARMUP}s warm-up)"
    wrk -t"$THREADS" -c"$CONCURRENCY" -d"${WARMUP}s" -s "$OUT/post.lua" "$url" >/dev/null
    with_cpu "$name" "$pid" \
        wrk -t"$THREADS" -c"$CONCURRENCY" -d"${DURATION}s" --timeout 5s --latency -s "$OUT/post.lua" "$url" \
        >"$OUT/$name.wrk.txt"
}

# oha_run NAME PID URL BODY: open loop at $RATE requests/s.
oha_run() {
    local name=$1 pid=$2 url=$3 body=$4
    local args=(-c "$CONCURRENCY" -q "$RATE" --latency-correction --no-tui -m POST
        -H 'Content-Type: application/json' -d "$body")
    log "$name: oha -c $CONCURRENCY -q $RATE --latency-correction -z ${DURATION}s (after ${WARMUP}s warm-up)"
    oha "${args[@]}" -z "${WARMUP}s" "$url" >/dev/null
    with_cpu "$name" "$pid" oha "${args[@]}" -z "${DURATION}s" --output-format json "$url" >"$OUT/$name.oha.json"
}

# ---- measure ---------------------------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "binary: ${ORCHESTRATOR_BIN:-built from this tree}"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    echo "wrk: $(wrk -v 2>&1 | head -n1 | awk '{ print $2 }')"
    echo "oha: $(oha --version | awk '{ print $2 }')"
    echo "rust_log: $RUST_LOG"
    echo "duration_s: $DURATION"
    echo "warmup_s: $WARMUP"
    echo "concurrency: $CONCURRENCY"
    echo "rate: $RATE"
    echo "tokens: $TOKENS"
    echo "peers: $PEERS"
    if has_peer portkey; then
        echo "portkey: $(node -p "require('$(dirname "$(dirname "$PORTKEY_SERVER")")/package.json').version") (node $(node --version))"
    fi
    if has_peer litellm; then
        echo "litellm: $("$(dirname "$LITELLM")/python" -c 'from importlib.metadata import version; print(version("litellm"))')"
    fi
    echo "gateway_idle_rss_kb: $(status_kb "$GATEWAY_PID" VmRSS)"
} >"$OUT/machine.txt"

log "waiting for $BENCH_LOCK (held while measuring)"
exec 9>"$BENCH_LOCK"
flock 9
wrk_run a-mock "$MOCK_PID" "$MOCK_URL" "$BODY"
if has_peer forwarder; then wrk_run a-forwarder "$FORWARDER_PID" "$FORWARDER_URL" "$BODY"; fi
wrk_run a-gateway "$GATEWAY_PID" "$GATEWAY_URL" "$BODY"
if has_peer portkey; then wrk_run a-portkey "$PORTKEY_PID" "$PORTKEY_URL" "$BODY" "$PORTKEY_HEADERS"; fi
if has_peer litellm; then wrk_run a-litellm "$LITELLM_PID" "$LITELLM_URL" "$BODY"; fi
oha_run b-mock "$MOCK_PID" "$MOCK_URL" "$BODY"
oha_run b-gateway "$GATEWAY_PID" "$GATEWAY_URL" "$BODY"
wrk_run c-mock-stream "$MOCK_PID" "$MOCK_URL" "$STREAM_BODY"
wrk_run c-gateway-stream "$GATEWAY_PID" "$GATEWAY_URL" "$STREAM_BODY"
flock -u 9

{
    echo "gateway_rss_kb: $(status_kb "$GATEWAY_PID" VmRSS)"
    echo "gateway_hwm_kb: $(status_kb "$GATEWAY_PID" VmHWM)"
    echo "mock_rss_kb: $(status_kb "$MOCK_PID" VmRSS)"
} >>"$OUT/machine.txt"
curl -sf "http://$GATEWAY_ADDR/metrics" >"$OUT/gateway-metrics.txt" || true

# A clean stop: SIGTERM drains and exits 0.
kill -TERM "$GATEWAY_PID"
if wait "$GATEWAY_PID"; then echo "gateway_exit: 0" >>"$OUT/machine.txt"; else echo "gateway_exit: $?" >>"$OUT/machine.txt"; fi
GATEWAY_PID=""

# ---- summary ---------------------------------------------------------------------------------
python3 - "$OUT" "$(getconf CLK_TCK)" <<'EOF' | tee "$OUT/summary.md"
import json, pathlib, sys

out, clk_tck = pathlib.Path(sys.argv[1]), int(sys.argv[2])
machine = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
               for line in (out / "machine.txt").read_text().splitlines())

def wrk(name):
    line = next(l for l in (out / f"{name}.wrk.txt").read_text().splitlines() if l.startswith("RESULT"))
    r = {k: int(v) for k, v in (f.split("=") for f in line.split()[1:])}
    secs = r["duration_us"] / 1e6
    errors = sum(v for k, v in r.items() if k.startswith("errors_"))
    return dict(rps=r["requests"] / secs, p50=r["p50_us"] / 1e3, p99=r["p99_us"] / 1e3,
                p999=r["p999_us"] / 1e3, errors=errors, n=r["requests"], secs=secs)

def oha(name):
    j = json.loads((out / f"{name}.oha.json").read_text())
    p = j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    n = sum(codes.values())
    # oha cancels the requests still in flight when the duration ends; those are not failures.
    failed = {k: v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k}
    errors = n - codes.get("200", 0) + sum(failed.values())
    return dict(rps=j["summary"]["requestsPerSec"], p50=p["p50"] * 1e3, p99=p["p99"] * 1e3,
                p999=p["p99.9"] * 1e3, errors=errors, n=n, secs=j["summary"]["total"])

def cpu(name, r):
    t = dict(f.split("=") for f in (out / f"{name}.cpu").read_text().split())
    p, m = int(t["proxy_ticks"]) / clk_tck, int(t["mock_ticks"]) / clk_tck
    if "mock" in name:
        return f"- / {100 * m / r['secs']:.0f}% | -"
    # CPU time per request is steadier than req/s when other work shares the cores.
    return f"{100 * p / r['secs']:.0f}% / {100 * m / r['secs']:.0f}% | {1e6 * p / max(r['n'], 1):.0f}"

def row(label, name, r):
    return (f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} "
            f"| {r['errors']} | {cpu(name, r)} |")

head = ("| run | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU proxy / mock | proxy CPU µs/req |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|")
peers = machine["peers"].split()
a_m, a_g = wrk("a-mock"), wrk("a-gateway")
a_p = {p: wrk(f"a-{p}") for p in peers}
b_m, b_g = oha("b-mock"), oha("b-gateway")
c_m, c_g = wrk("c-mock-stream"), wrk("c-gateway-stream")
added_p99 = b_g["p99"] - b_m["p99"]
rss_mb, hwm_mb = int(machine["gateway_rss_kb"]) / 1024, int(machine["gateway_hwm_kb"]) / 1024
c, rate = machine["concurrency"], machine["rate"]
ok = lambda met: "met" if met else "NOT MET"
labels = {"forwarder": "forwarder -> mock", "portkey": f"Portkey {machine.get('portkey', '')} -> mock",
          "litellm": f"LiteLLM {machine.get('litellm', '')} -> mock"}

built = machine["binary"] == "built from this tree"
print(f"## Gateway benchmark, {machine['date']} "
      f"({'commit ' + machine['commit'] if built else 'binary ' + machine['binary']})\n")
print(f"{machine['nproc']} cores ({machine['cpu']}), shared by the load generator, the mock and the proxy; "
      f"wrk {machine['wrk']}, oha {machine['oha']}; gateway RUST_LOG={machine['rust_log']}.\n")
print(f"(a) non-streaming, concurrency {c}, closed loop (wrk):\n\n{head}")
print(row("mock alone", "a-mock", a_m))
if "forwarder" in a_p:
    print(row(labels["forwarder"], "a-forwarder", a_p["forwarder"]))
print(row("gateway -> mock", "a-gateway", a_g))
for p in peers:
    if p != "forwarder":
        print(row(labels[p], f"a-{p}", a_p[p]))
print(f"\n(b) non-streaming, fixed {rate} req/s, concurrency {c} (oha, latency-corrected):\n\n{head}")
print(row("mock alone", "b-mock", b_m)); print(row("gateway -> mock", "b-gateway", b_g))
print(f"\n(c) streaming, concurrency {c}, closed loop (wrk), for information:\n\n{head}")
print(row("mock alone", "c-mock-stream", c_m)); print(row("gateway -> mock", "c-gateway-stream", c_g))
print(f"\n(d) gateway memory after the run: VmRSS {rss_mb:.1f} MB, VmHWM (peak) {hwm_mb:.1f} MB "
      f"(idle after start: {int(machine['gateway_idle_rss_kb']) / 1024:.1f} MB); clean exit: {machine['gateway_exit'] == '0'}\n")
print("| measure | figure | target |\n|---|---|---|")
# No ratio to the mock alone: with the load generator, the mock and the proxy on the same cores,
# it measures the load generator as much as the gateway. The forwarder pays the same HTTP work on
# the same cores, so the ratio to it is the one that holds from run to run.
if "forwarder" in a_p:
    fwd = a_g["rps"] / a_p["forwarder"]["rps"]
    print(f"| gateway / forwarder throughput (c={c}, same run) | {fwd:.2f}x | compare builds by it |")
for p in peers:
    if p != "forwarder":
        x = a_g["rps"] / a_p[p]["rps"]
        target = f"≥ 40x: {ok(x >= 40)}" if p == "litellm" else ""
        print(f"| gateway / {p} throughput (c={c}, same run) | {x:,.1f}x | {target} |")
print(f"| added p99 at {rate} req/s | {added_p99:+.2f} ms ({b_g['p99']:.2f} - {b_m['p99']:.2f}) | < 1 ms: {ok(added_p99 < 1.0)} |")
print(f"| gateway RSS after the run | {rss_mb:.1f} MB (peak {hwm_mb:.1f} MB) | < 64 MB: {ok(rss_mb < 64)} |")
total_errors = sum(r["errors"] for r in (a_m, a_g, b_m, b_g, c_m, c_g, *a_p.values()))
if total_errors:
    print(f"\nWARNING: {total_errors} failed requests; see the raw outputs.")
print(f"\nRaw outputs: {out}/")
EOF
