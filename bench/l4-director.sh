#!/usr/bin/env bash
# Director (proxy mode) vs HAProxy `mode tcp` + `send-proxy-v2`, side by side
# in one run, on loopback. Both relay to the same nginx origin that speaks
# PROXY protocol (the shared harness's origin config). Cells: keep-alive 100 B
# responses, keep-alive 1 MiB responses (long transfers), and short
# connections (`Connection: close`: one TCP connection per request).
#
# Pinning as in ../shared/bench/l7.sh: SUT on CPU 0, wrk and origin on CPU 1.
# CPU per 100k requests is utime+stime of the SUT process (from /proc).
#
# Usage: bench/l4-director.sh            (DURATION=5 REPS=3 CONNS=50)
# Needs: nginx, haproxy, wrk (Debian packages), a release build of tandem.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
shared="${SHARED_BENCH:-$here/../../shared/bench}"
bin="${TANDEM_BIN:-$here/../target/release/tandem}"
DURATION="${DURATION:-5}"; REPS="${REPS:-3}"; CONNS="${CONNS:-50}"
HZ=$(getconf CLK_TCK)
run=$(mktemp -d /tmp/l4bench.XXXXXX); mkdir -p "$run"/{tmp,www}; chmod 755 "$run" "$run/www"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"; }
trap cleanup EXIT

[ -x "$bin" ] || { echo "build first: cargo build --release -p tandem" >&2; exit 1; }
# The shared origin, plus a 1 MiB file for the long-transfer cell.
sed "s#@RUN@#$run#g" "$shared/conf/origin.nginx.conf" \
    | sed 's#location = /16k { root \(.*\); }#&\n        location = /1m { root \1; }#' > "$run/origin.conf"
head -c 16384 /dev/zero | tr '\0' 'x' > "$run/www/16k"
head -c 1048576 /dev/zero | tr '\0' 'y' > "$run/www/1m"
taskset -c 1 nginx -p "$run/" -e "$run/origin.error.log" -c "$run/origin.conf" & pids+=($!)
sed "s#@RUN@#$run#g" "$shared/conf/haproxy.cfg" | sed '/ssl crt/d' > "$run/haproxy.cfg"
taskset -c 0 haproxy -f "$run/haproxy.cfg" -db >/dev/null 2>&1 & hap=$!; pids+=($hap)
cat > "$run/director.toml" <<TOML
[[services]]
name = "bench"
address = "127.0.0.1:18302"
[[nodes]]
id = "origin"
address = "127.0.0.1:18090"
weight = 100
TOML
taskset -c 0 "$bin" director --id bench --config "$run/director.toml" --health-interval-ms 60000 \
    ${DIRECTOR_FLAGS:-} >"$run/director.log" 2>&1 & dir=$!; pids+=($dir)
for port in 18090 18102 18302; do
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/100" 2>/dev/null && break; sleep 0.1; done
done
[ "$(curl -s http://127.0.0.1:18302/1m | wc -c)" = 1048576 ] || { echo "director path broken" >&2; cat "$run/director.log" >&2; exit 1; }

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# tree: nginx/haproxy/tandem here are single processes (haproxy -db, 1 thread).
printf '| system | cell | conns | rps median (min–max) | MB/s median | p99 ms median | SUT CPU-s / 100k req median |\n|---|---|---:|---:|---:|---:|---:|\n'
declare -A med_rps med_cpu
for cell in ka-100B ka-1MiB close-100B; do
    case $cell in
        ka-100B) path=/100; hdr=() ;;
        ka-1MiB) path=/1m; hdr=() ;;
        close-100B) path=/100; hdr=(-H "Connection: close") ;;
    esac
    for sys in haproxy director; do
        if [ $sys = haproxy ]; then pid=$hap; port=18102; else pid=$dir; port=18302; fi
        rows=()
        for _ in $(seq "$REPS"); do
            t0=$(ticks "$pid")
            out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "http://127.0.0.1:$port$path")
            t1=$(ticks "$pid")
            reqs=$(awk '/requests in/ {print $1}' <<<"$out")
            rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
            mbs=$(awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub(/GB/,"",v); v*=1024} else if (v ~ /MB/) {sub(/MB/,"",v)} else if (v ~ /KB/) {sub(/KB/,"",v); v/=1024}; print v}' <<<"$out")
            p99=$(awk '$1=="99%" {v=$2; if (v ~ /us/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms/) {sub(/ms/,"",v)} else if (v ~ /s/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
            errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out")
            [ -n "$errs" ] && echo "note: $sys $cell: $errs" >&2
            cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.3f", t / hz / n * 100000}')
            rows+=("$rps $mbs $p99 $cpu")
        done
        med() { printf '%s\n' "${rows[@]}" | awk -v c="$1" '{print $c}' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
        mn() { printf '%s\n' "${rows[@]}" | awk -v c="$1" '{print $c}' | sort -g | head -1; }
        mx() { printf '%s\n' "${rows[@]}" | awk -v c="$1" '{print $c}' | sort -g | tail -1; }
        r=$(med 1); c=$(med 4)
        med_rps[$sys.$cell]=$r; med_cpu[$sys.$cell]=$c
        printf '| %s | %s | %s | %.0f (%.0f–%.0f) | %.1f | %.2f | %s |\n' "$sys" "$cell" "$CONNS" "$r" "$(mn 1)" "$(mx 1)" "$(med 2)" "$(med 3)" "$c"
    done
done
echo
printf '| cell | rps director/haproxy | CPU per request director/haproxy |\n|---|---:|---:|\n'
for cell in ka-100B ka-1MiB close-100B; do
    awk -v a="${med_rps[director.$cell]}" -v b="${med_rps[haproxy.$cell]}" -v c="${med_cpu[director.$cell]}" -v d="${med_cpu[haproxy.$cell]}" -v cell=$cell \
        'BEGIN {printf "| %s | %.2fx | %.2fx |\n", cell, a/b, c/d}'
done
