# Instructions per request of one process under valgrind's callgrind, for the benchmark scripts
# (sourced, not run). The caller sets: out (a directory), requests, warmup, concurrency, body (the
# JSON sent), header (an array of oha -H arguments, may be empty) and pids (an array the caller's
# EXIT trap kills).
#
# callgrind_measure NAME READY_URL LOAD_URL CMD...: runs CMD under callgrind, waits until
# READY_URL answers, sends WARMUP requests to LOAD_URL at CONCURRENCY with oha, zeroes the
# counters, sends REQUESTS more, and prints CMD's instructions per request. LOAD_URL may be
# another process's (a gateway in front of the measured worker).
callgrind_measure() {
    local name=$1 ready=$2 target=$3
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$out/$name.callgrind.out.%p" "$@" \
        >"$out/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 120); do
        curl -sf "$ready" >/dev/null && break
        sleep 1
    done
    callgrind_load() {
        oha -n "$1" -c "$concurrency" --no-tui -m POST -H 'content-type: application/json' "${header[@]}" \
            -d "$body" "$target"
    }
    callgrind_load "$warmup" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    callgrind_load "$requests" >"$out/$name.oha.txt"
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
