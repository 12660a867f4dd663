#!/usr/bin/env bash
# User-space instructions per proxied request of the node (callgrind), for
# A/B of code changes on a noisy machine where wall-clock figures drift.
#
#   ORIGIN=127.0.0.1:18080 bash bench/sut-node-callgrind.sh [N]
#
# Runs `tandem node` (static config: one cluster to $ORIGIN, which must serve
# GET /100, e.g. the origin of ../shared/bench/l7.sh) under
# `valgrind --tool=callgrind`, once with no load and once with N (default
# 20000) HTTP/1.1 keep-alive requests from `h2load --h1 -c 50`, and prints
# (Ir(N) - Ir(0)) / N. Pinning as in l7.sh: node on CPU ${SUT_CPU:-0},
# client on CPU ${CLIENT_CPU:-1}. Needs valgrind and h2load.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${TANDEM_BIN:-$here/../target/release/tandem}"
origin="${ORIGIN:?set ORIGIN=host:port of an HTTP origin serving /100}"
n="${1:-20000}"
port="${CG_PORT:-18390}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cat > "$dir/node.toml" <<TOML
[[clusters]]
name = "origin"
lb_policy = "round_robin"
endpoints = [{ address = "$origin", weight = 1 }]

[[routes]]
name = "all"
cluster = "origin"
TOML

run() { # run REQUESTS -> prints Ir of the whole node process
    local reqs="$1" pid i
    RUST_LOG=warn taskset -c "${SUT_CPU:-0}" valgrind --tool=callgrind \
        --callgrind-out-file="$dir/cg.out" "$bin" node --id bench --config "$dir/node.toml" \
        --listen 127.0.0.1:$((port + 1)) --plain-listen "127.0.0.1:$port" \
        --proxy-protocol off >"$dir/log" 2>&1 </dev/null &
    pid=$!
    for i in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$port/100" && break
        sleep 0.2
    done
    if [[ "$reqs" -gt 0 ]]; then
        taskset -c "${CLIENT_CPU:-1}" h2load --h1 -n "$reqs" -c 50 -t1 \
            "http://127.0.0.1:$port/100" | grep -E '^requests:' >&2
    fi
    kill -INT "$pid"
    wait "$pid" || true
    awk '/Collected/ {print $NF}' "$dir/log"
}

base=$(run 0)
loaded=$(run "$n")
echo "instructions per request: $(((loaded - base) / n)) (Ir $base idle, $loaded with $n requests)"
