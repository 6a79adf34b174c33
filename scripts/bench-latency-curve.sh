#!/usr/bin/env bash
# Latency against offered rate, non-streaming: the mock upstream alone, the bare forwarder, the
# gateway and the peers, from a low rate to past the gateway's saturation, each point measured
# REPEATS times by separate runs of the load harness (each starts its own servers). Draws
# latency-rate-nonstreaming.png (p50 and p99 against offered rate, the median of the runs with
# min-max whiskers, and the throughput achieved) and writes the same figures as a table
# (summary.md), so the chart and the table come from one set of runs.
#
#   bash scripts/bench-latency-curve.sh
#   cp bench-results/latency-curve-<UTC time>/latency-rate-nonstreaming.png docs/benchmarks/
#
# Open loop (orchestrator-bench --mode rate): requests start on a fixed schedule whatever the
# server does, and latency counts from each request's scheduled start, so queueing past
# saturation shows as latency instead of slowing the load down. Peers far slower than the
# gateway are offered rates up to a cap only (MAX_RATES): past their saturation every request
# would wait out the timeout, and a run would only measure how long the queue is.
#
# Builds the gateway and the harness in release, installs the peers (scripts/setup-portkey.sh,
# scripts/setup-litellm.sh) and matplotlib (in .venv-plot, git-ignored by a .gitignore of its
# own). Raw results stay in bench-results/latency-curve-<UTC time>/run-N/.
#
# Settings, from the environment (defaults in brackets):
#   RATES [100,200,500,1000,2000,5000,10000,15000,20000,25000,30000,40000]  offered req/s
#   REPEATS [3]        harness runs; each point of the chart is their median
#   DURATION [5]       seconds of each measured run       WARMUP [2]  seconds of warm-up before it
#   PEERS [forwarder,portkey,litellm]   measured beside the mock alone and the gateway
#   MAX_RATES [portkey=1000,litellm=200]  highest rate offered to a system
#   ORCHESTRATOR_BIN   measure this binary instead of the one built here
#   HARNESS_BIN        run this orchestrator-bench and build nothing (the forwarder is taken from
#                      its directory, and the gateway too unless ORCHESTRATOR_BIN is given)
#   BENCH_LOCK [/tmp/bench.lock]  held (flock) by the harness while it measures
set -euo pipefail
cd "$(dirname "$0")/.."

RATES="${RATES:-100,200,500,1000,2000,5000,10000,15000,20000,25000,30000,40000}"
REPEATS="${REPEATS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-2}"
PEERS="${PEERS-forwarder,portkey,litellm}"
MAX_RATES="${MAX_RATES-portkey=1000,litellm=200}"
BENCH_LOCK="${BENCH_LOCK:-/tmp/bench.lock}"
MATPLOTLIB_VERSION="3.10.8"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
HARNESS="${HARNESS_BIN:-$CARGO_TARGET_DIR/release/orchestrator-bench}"
OUT="bench-results/latency-curve-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
log() { printf '== %s\n' "$*" >&2; }

if [ -z "${HARNESS_BIN:-}" ]; then
    log "building the gateway and the load harness (release)"
    cargo build --release --quiet -p orchestrator-server -p orchestrator-bench -p orchestrator-mock
fi
args=(--mode rate --rates "$RATES" --duration "${DURATION}s" --warmup "${WARMUP}s" --lock "$BENCH_LOCK" --no-chart)
[ -n "${ORCHESTRATOR_BIN:-}" ] && args+=(--orchestrator-bin "$ORCHESTRATOR_BIN")
[ -n "$PEERS" ] && args+=(--peer "$PEERS")
[ -n "$MAX_RATES" ] && args+=(--max-rate "$MAX_RATES")
# The harness's defaults are where these scripts install the peers.
case ",$PEERS," in *,portkey,*) bash scripts/setup-portkey.sh >/dev/null ;; esac
case ",$PEERS," in *,litellm,*) bash scripts/setup-litellm.sh >/dev/null ;; esac

VENV=.venv-plot
if ! "$VENV/bin/python" -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null; then
    log "creating $VENV with matplotlib $MATPLOTLIB_VERSION"
    python3 -m venv "$VENV"
    printf '*\n' >"$VENV/.gitignore"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
fi

gateway_bin=${ORCHESTRATOR_BIN:-}
if [ -z "$gateway_bin" ] && [ -n "${HARNESS_BIN:-}" ]; then gateway_bin="$(dirname "$HARNESS_BIN")/orchestrator"; fi
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "binary: ${gateway_bin:-built from this tree}"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "harness: ${args[*]}"
} >"$OUT/machine.txt"

for i in $(seq "$REPEATS"); do
    log "run $i of $REPEATS: orchestrator-bench ${args[*]}"
    "$HARNESS" "${args[@]}" --out "$OUT/run-$i" >"$OUT/run-$i.log" 2>&1 || {
        cat "$OUT/run-$i.log" >&2
        exit 1
    }
done

"$VENV/bin/python" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, pathlib, statistics, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

out = pathlib.Path(sys.argv[1])
machine = dict(l.split(": ", 1) for l in (out / "machine.txt").read_text().splitlines())
runs = sorted(out.glob("run-*/results.json"))
# (system, offered rate) -> one row per run
points = {}
for r in runs:
    for row in json.loads(r.read_text())["rows"]:
        points.setdefault((row["system"], row["offered_rps"]), []).append(row)

order = ["upstream alone", "forwarder", "gateway", "portkey", "litellm"]
systems = sorted({s for s, _ in points}, key=lambda s: order.index(s) if s in order else len(order))
label = {"upstream alone": "mock alone", "forwarder": "bare forwarder", "gateway": "gateway",
         "portkey": "Portkey", "litellm": "LiteLLM"}
color = {"upstream alone": "tab:gray", "forwarder": "tab:blue", "gateway": "tab:red",
         "portkey": "tab:green", "litellm": "tab:purple"}

def stat(rows, f):
    v = [f(r) for r in rows]
    return statistics.median(v), min(v), max(v)

def p(rows, q):
    # A run with no successful request has no latency; it counts as missing, and shows as failed.
    v = [r["latency"][q] for r in rows if r["latency"]]
    return (statistics.median(v), min(v), max(v)) if v else None

# A point whose runs lost more than 1 % of their requests: drawn hollow, its latency is that of
# the requests that succeeded.
def failed(rows):
    return sum(r["errors"] for r in rows) > 0.01 * sum(r["sent"] for r in rows)

fig, (ax_l, ax_t) = plt.subplots(1, 2, figsize=(14, 6.2), gridspec_kw={"width_ratios": [3, 2]})
for s in systems:
    rates = sorted(rate for sys_, rate in points if sys_ == s)
    for q, style, width in (("p99_ms", "-", 2.2), ("p50_ms", "--", 1.2)):
        xs, ys, lo, hi, hollow = [], [], [], [], []
        for rate in rates:
            v = p(points[(s, rate)], q)
            if v is None:
                continue
            xs.append(rate); ys.append(v[0]); lo.append(v[0] - v[1]); hi.append(v[2] - v[0])
            hollow.append(failed(points[(s, rate)]))
        ax_l.errorbar(xs, ys, yerr=[lo, hi], fmt=style, color=color.get(s), lw=width, capsize=3,
                      label=f"{label.get(s, s)} {q[:3]}")
        ax_l.scatter([x for x, h in zip(xs, hollow) if not h], [y for y, h in zip(ys, hollow) if not h],
                     color=color.get(s), s=18 if q == "p99_ms" else 10, zorder=3)
        ax_l.scatter([x for x, h in zip(xs, hollow) if h], [y for y, h in zip(ys, hollow) if h],
                     facecolors="white", edgecolors=color.get(s), s=40, zorder=4)
    tp = [stat(points[(s, r)], lambda r: r["throughput_rps"]) for r in rates]
    ax_t.errorbar(rates, [t[0] for t in tp], yerr=[[t[0] - t[1] for t in tp], [t[2] - t[0] for t in tp]],
                  fmt="-o", ms=3, color=color.get(s), capsize=3, label=label.get(s, s))
all_rates = sorted({rate for _, rate in points})
ax_t.plot(all_rates, all_rates, ":", color="black", lw=1, label="achieved = offered")
# Plain numbers at 1, 2 and 5 of each decade read more easily than powers of ten.
plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
for ax in (ax_l, ax_t):
    ax.set_xscale("log"); ax.set_yscale("log"); ax.grid(True, which="both", alpha=0.3)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("offered rate (req/s)")
ax_l.set_ylabel("latency from scheduled start (ms)")
ax_l.set_title("p99 (solid) and p50 (dashed)")
ax_t.set_ylabel("successful req/s")
ax_t.set_title("throughput achieved")
ax_l.legend(fontsize=8, ncol=2, loc="upper left")
ax_t.legend(fontsize=8, loc="upper left")
fig.suptitle(f"Non-streaming chat completions, open loop, everything on {machine['nproc']} shared cores: "
             f"median of {len(runs)} runs, whiskers min to max; hollow: over 1 % of requests failed",
             fontsize=10)
fig.tight_layout()
fig.savefig(out / "latency-rate-nonstreaming.png", dpi=110)

print(f"## Latency against offered rate, {machine['date']} "
      f"({'commit ' + machine['commit'] if machine['binary'] == 'built from this tree' else 'binary ' + machine['binary']})\n")
print(f"{machine['nproc']} cores ({machine['cpu']}); {len(runs)} runs of `orchestrator-bench {machine['harness']}`; "
      "median (min to max) of the runs.\n")
print("| system | offered req/s | achieved req/s | p50 ms | p99 ms | failed | send lag p99 ms, worst |")
print("|---|---:|---:|---:|---:|---:|---:|")
fmt = lambda v: "-" if v is None else (f"{v[0]:.2f} ({v[1]:.2f} to {v[2]:.2f})" if v[0] < 100
                                      else f"{v[0]:,.0f} ({v[1]:,.0f} to {v[2]:,.0f})")
for s in systems:
    for rate in sorted(rate for sys_, rate in points if sys_ == s):
        rows = points[(s, rate)]
        tp = stat(rows, lambda r: r["throughput_rps"])
        lost = sum(r["errors"] for r in rows) / max(sum(r["sent"] for r in rows), 1)
        lag = max((r["send_lag"]["p99_ms"] for r in rows if r["send_lag"]), default=0)
        print(f"| {label.get(s, s)} | {rate:,.0f} | {tp[0]:,.0f} | {fmt(p(rows, 'p50_ms'))} | "
              f"{fmt(p(rows, 'p99_ms'))} | {100 * lost:.1f} % | {lag:.2f} |")
print(f"\nChart: {out}/latency-rate-nonstreaming.png")
EOF
