#!/usr/bin/env bash
# Interleaved A/B of running systems: each round runs wrk against every
# system in turn, so a host slowdown hits all of them (the suite measures one
# system after the other). Prints one line per system and round; pipe the
# output to bench/ab_pairs.py for per-round ratios and their medians.
#
#   bench/ab-interleaved.sh DURATION_S ROUNDS 'name|url|pid' ...
#   bench/ab-interleaved.sh 5 12 "hap|http://127.0.0.1:19100/100|$HAPROXY_PID" \
#       "node|http://127.0.0.1:19300/100|$NODE_PID" | tee ab.txt
#   python3 bench/ab_pairs.py ab.txt hap node
#
# wrk -t1 -c50 --latency on CPU ${CLIENT_CPU:-1}; CPU per request of each
# system from /proc/PID/stat (user and system, the process's own threads).
# Bounded: ROUNDS × systems runs of DURATION_S seconds.
set -euo pipefail
dur="$1"; rounds="$2"; shift 2
tick=$(getconf CLK_TCK)
for _ in $(seq "$rounds"); do
  for s in "$@"; do
    IFS='|' read -r name url pid <<< "$s"
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(timeout $((dur + 30)) taskset -c "${CLIENT_CPU:-1}" wrk -t1 -c50 -d"${dur}s" --latency "$url" 2>&1)
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    n=$(awk '/requests in/ {print $1}' <<< "$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<< "$out")
    p99=$(awk '$1=="99%" {print $2}' <<< "$out")
    # µs per request = ticks × (1e6 / CLK_TCK) / requests
    us() { echo "scale=2; $1 * 1000000 / $tick / $n" | bc; }
    echo "$name rps=$rps user=$(us $((u1 - u0))) sys=$(us $((s1 - s0))) total=$(us $((u1 - u0 + s1 - s0))) p99=$p99"
  done
done
