#!/usr/bin/env bash
# Director CPU cost: xdp mode (L2 DSR) vs proxy mode vs HAProxy `mode tcp`
# (send-proxy-v2), side by side in one run, in network namespaces:
#
#   client 10.202.0.100 (wrk) ─┐
#   director 10.202.0.11 ──────┼── bridge (own namespace)
#   node 10.202.0.21 (nginx) ──┘   VIP 10.202.1.10 on the node's lo
#
# - xdp: client -> VIP:80 -> director's XDP program (dst MAC := node's) ->
#   nginx :80; replies node -> client directly.
# - proxy: client -> tandem director (proxy mode) 10.202.0.11:8302 -> nginx
#   :81 with PROXY v2; replies back through the director.
# - haproxy: the same through HAProxy `mode tcp` 10.202.0.11:8102.
#
# What is measured, per 100k requests and per GB of responses:
# - proxy and haproxy: utime+stime of the director process (/proc/PID/stat),
#   pinned to CPU 0. Kernel softirq work done for its sockets on other
#   CPUs is not in it, so this flatters proxy mode and HAProxy.
# - xdp: the XDP program's own run time (kernel.bpf_stats_enabled=1,
#   run_time_ns of the program from bpftool). The veth/NIC receive work
#   before the program is not in it; there is no process to account.
# - packets per second per core of the XDP program: (a) BPF_PROG_TEST_RUN
#   (`bpftool prog run ... repeat N`) of one TCP packet of an established
#   flow (flow-table hit), (b) a bounded sender in the client namespace
#   (python raw socket, N SYNs from distinct source ports: flow-table misses)
#   with the program's run time per packet from bpf_stats.
#
# Usage: sudo bench/xdp-director.sh   (DURATION=5 REPS=3 CONNS=50 SYNS=100000)
# Needs: root, iproute2, ethtool, nginx, haproxy, wrk, bpftool, python3, and
# `cargo build --release -p tandem` (with clang: the BPF objects).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${TANDEM_BIN:-$here/../target/release/tandem}"
DURATION="${DURATION:-5}"; REPS="${REPS:-3}"; CONNS="${CONNS:-50}"; SYNS="${SYNS:-100000}"
HZ=$(getconf CLK_TCK)
[ "$(id -u)" = 0 ] || { echo "needs root (namespaces, XDP)" >&2; exit 1; }
[ -x "$bin" ] || { echo "build first: cargo build --release -p tandem" >&2; exit 1; }
pass_o=$(find "$here/../target/release/build" -path '*xdp-*/out/pass.o' -newer "$here/../crates/xdp/bpf/pass.c" 2>/dev/null | head -1)
[ -n "$pass_o" ] || pass_o=$(find "$here/../target/release/build" -path '*xdp-*/out/pass.o' | head -1)

p="tdm-xb$$"
run=$(mktemp -d /tmp/xdpbench.XXXXXX); chmod 755 "$run"; mkdir -p "$run/www"; chmod 755 "$run/www"
pids=(); namespaces=()
old_stats=$(cat /proc/sys/kernel/bpf_stats_enabled)
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    echo "$old_stats" > /proc/sys/kernel/bpf_stats_enabled
    rm -rf "$run"
}
trap cleanup EXIT
nsx() { local h=$1; shift; ip netns exec "$p-$h" "$@"; }

ip netns add "$p-sw"; namespaces+=("$p-sw")
ip -n "$p-sw" link add br0 type bridge; ip -n "$p-sw" link set br0 up
host() {
    local h=$1 addr=$2
    ip netns add "$p-$h"; namespaces+=("$p-$h")
    ip -n "$p-$h" link set lo up
    ip -n "$p-sw" link add "v-$h" type veth peer name eth0 netns "$p-$h"
    ip -n "$p-sw" link set "v-$h" master br0 up
    ip -n "$p-$h" addr add "$addr/24" dev eth0
    ip -n "$p-$h" link set eth0 up
}
host client 10.202.0.100; host dir 10.202.0.11; host node 10.202.0.21
VIP=10.202.1.10
ip -n "$p-node" addr add "$VIP/32" dev lo
nsx node sh -c 'echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore; echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce'
ip -n "$p-client" route add "$VIP/32" via 10.202.0.11
# Generic XDP drops GSO super-packets, native XDP_TX loses checksum offload:
# the client computes its own checksums and segments (all three systems alike).
nsx client ethtool -K eth0 tx off tso off gso off >/dev/null
# Native XDP_TX into a veth needs an XDP program on the peer.
ip -n "$p-sw" link set dev v-dir xdpdrv obj "$pass_o" sec xdp

head -c 100 /dev/zero | tr '\0' 'x' > "$run/www/100"
head -c 1048576 /dev/zero | tr '\0' 'y' > "$run/www/1m"
cat > "$run/nginx.conf" <<NGINX
worker_processes 1;
pid $run/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    server {
        listen 80 reuseport;
        listen 81 proxy_protocol;
        root $run/www;
        location / { }
    }
}
NGINX
ip netns exec "$p-node" taskset -c 1 nginx -p "$run/" -e "$run/nginx.error.log" -c "$run/nginx.conf" -g 'daemon off;' & pids+=($!)

node_mac=$(ip -n "$p-node" -br link show eth0 | awk '{print $3}')
cat > "$run/xdp.toml" <<TOML
[[services]]
name = "bench"
address = "$VIP:80"
[[nodes]]
id = "node"
address = "10.202.0.21:80"
mac = "$node_mac"
weight = 100
TOML
cat > "$run/proxy.toml" <<TOML
[[services]]
name = "bench"
address = "10.202.0.11:8302"
[[nodes]]
id = "node"
address = "10.202.0.21:81"
weight = 100
TOML
cat > "$run/haproxy.cfg" <<HAP
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind 10.202.0.11:8102
    default_backend b
backend b
    server node 10.202.0.21:81 send-proxy-v2
HAP
ip netns exec "$p-dir" taskset -c 0 "$bin" director --id xdp --config "$run/xdp.toml" --health-interval-ms 60000 \
    --mode xdp --xdp-interface eth0 --xdp-attach native --xdp-max-vips 4 --xdp-flow-table-size 262144 \
    >"$run/xdp.log" 2>&1 & xdp_pid=$!; pids+=($xdp_pid)
ip netns exec "$p-dir" taskset -c 0 "$bin" director --id proxy --config "$run/proxy.toml" --health-interval-ms 60000 \
    --accept-loops 1 >"$run/proxy.log" 2>&1 & proxy_pid=$!; pids+=($proxy_pid)
ip netns exec "$p-dir" taskset -c 0 haproxy -f "$run/haproxy.cfg" -db >/dev/null 2>&1 & hap_pid=$!; pids+=($hap_pid)
# `ip netns exec` execs, so these PIDs are the programs'.
for url in "http://$VIP/100" http://10.202.0.11:8302/100 http://10.202.0.11:8102/100; do
    ok=""
    for _ in $(seq 100); do
        if [ "$(nsx client curl -s -m 2 "$url" 2>/dev/null | wc -c)" = 100 ]; then ok=1; break; fi
        sleep 0.1
    done
    [ -n "$ok" ] || { echo "path $url broken" >&2; tail -20 "$run"/*.log >&2; exit 1; }
done

echo 1 > /proc/sys/kernel/bpf_stats_enabled
# The program attached to the director's eth0 (not another run's).
prog_id=$(ip -n "$p-dir" -j -d link show eth0 | python3 -c 'import json,sys; x=json.load(sys.stdin)[0]["xdp"]; print(x.get("prog", x.get("attached", [{}])[0].get("prog", {}))["id"])')
bpf_ns() { bpftool prog show id "$prog_id" -j | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j.get("run_time_ns",0), j.get("run_cnt",0))'; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores; DURATION=$DURATION REPS=$REPS CONNS=$CONNS"
printf '| system | cell | rps median | MB/s median | director CPU-ms / 100k req | director CPU-ms / GB | packets through the director / req |\n|---|---|---:|---:|---:|---:|---:|\n'
for cell in ka-100B ka-1MiB close-100B; do
    case $cell in
        ka-100B) path=/100; hdr=() ;;
        ka-1MiB) path=/1m; hdr=() ;;
        close-100B) path=/100; hdr=(-H "Connection: close") ;;
    esac
    for sys in xdp proxy haproxy; do
        case $sys in
            xdp) url="http://$VIP$path"; pid=$xdp_pid ;;
            proxy) url="http://10.202.0.11:8302$path"; pid=$proxy_pid ;;
            haproxy) url="http://10.202.0.11:8102$path"; pid=$hap_pid ;;
        esac
        rows=()
        for _ in $(seq "$REPS"); do
            read -r b0 c0 < <(bpf_ns); t0=$(ticks "$pid")
            rx0=$(nsx dir cat /sys/class/net/eth0/statistics/rx_packets)
            out=$(nsx client taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" "$url")
            read -r b1 c1 < <(bpf_ns); t1=$(ticks "$pid")
            rx1=$(nsx dir cat /sys/class/net/eth0/statistics/rx_packets)
            reqs=$(awk '/requests in/ {print $1}' <<<"$out")
            bytes=$(awk '/requests in/ {v=$5; sub(/,$/,"",v); m=1; if (v ~ /GB/) m=1e9; else if (v ~ /MB/) m=1e6; else if (v ~ /KB/) m=1e3; sub(/[KMG]?B$/,"",v); print v*m}' <<<"$out")
            rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
            errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out")
            [ -n "$errs" ] && echo "note: $sys $cell: $errs" >&2
            if [ $sys = xdp ]; then cpu_ns=$((b1 - b0)); else cpu_ns=$(( (t1 - t0) * 1000000000 / HZ )); fi
            rows+=("$(awk -v ns="$cpu_ns" -v n="$reqs" -v b="$bytes" -v r="$rps" -v p=$((rx1 - rx0)) \
                'BEGIN {printf "%s %.1f %.3f %.1f %.1f", r, b/1e6/('"$DURATION"'), ns/1e6/n*100000, ns/1e6/(b/1e9), p/n}')")
        done
        med() { printf '%s\n' "${rows[@]}" | awk -v c="$1" '{print $c}' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
        printf '| %s | %s | %.0f | %s | %s | %s | %s |\n' "$sys" "$cell" "$(med 1)" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 5)"
    done
done

# Packets per second per core of the XDP program.
python3 - "$run/syn.bin" <<'PY'
import struct, sys
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
src, dst = bytes([10,202,0,100]), bytes([10,202,1,10])
tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 1, 5 << 4, 0x10, 65535, 0, 0)
tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = bytes.fromhex("020000000001") + bytes.fromhex("020000000002") + b"\x08\x00"
open(sys.argv[1], "wb").write(eth + ip + tcp)
PY
REPEAT=1000000
tr=$(nsx dir bpftool prog run id "$prog_id" data_in "$run/syn.bin" repeat $REPEAT 2>&1)
dur=$(awk '/duration/ {v=$NF; sub(/ns$/,"",v); print v}' <<<"$tr")
echo
echo "XDP program, BPF_PROG_TEST_RUN, one established-flow packet x $REPEAT: ${dur} ns/packet = $(awk -v d="$dur" 'BEGIN {printf "%.1f", 1000/d}') Mpps per core (program only)"
read -r b0 c0 < <(bpf_ns)
nsx client python3 - "$VIP" "$SYNS" <<'PY'
import socket, struct, sys, time
vip, n = sys.argv[1], int(sys.argv[2])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
src, dst = socket.inet_aton("10.202.0.100"), socket.inet_aton(vip)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
t = time.time()
for i in range(n):
    sport = 1024 + i % 60000
    seq = i
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, 0, 5 << 4, 0x02, 65535, 0, 0)
    c = csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    s.sendto(tcp, (vip, 0))
print(f"sender: {n} SYNs in {time.time() - t:.1f}s", file=sys.stderr)
PY
read -r b1 c1 < <(bpf_ns)
awk -v ns=$((b1 - b0)) -v n=$((c1 - c0)) 'BEGIN {printf "XDP program, bounded sender on veth (SYNs from distinct ports, flow misses): %d packets, %.0f ns/packet = %.2f Mpps per core (program only)\n", n, ns/n, n/ns*1000}'
