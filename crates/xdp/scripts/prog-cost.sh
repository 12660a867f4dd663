#!/usr/bin/env bash
# In-kernel cost of the director program per packet (BPF_PROG_TEST_RUN, the
# program alone: no driver, no wire), for an established TCP flow to a VIP
# forwarded by L2 DSR, and for a packet that is not for a VIP.
#
# Encapsulation cannot be measured this way: test_run repeats the program on
# the same buffer, so from the second run on it sees the already
# encapsulated packet (IPIP/GUE to a node, not for a VIP) and passes it.
# Needs root, bpftool and the objects built by `cargo build -p xdp`
# (target/*/build/xdp-*/out/director.o). Runs in a private mount namespace
# with its own bpffs: nothing is left pinned.
#
#   sudo crates/xdp/scripts/prog-cost.sh [repeat]
set -euo pipefail
cd "$(dirname "$0")/../../.."
repeat=${1:-5000000}
obj=$(ls -t target/*/build/xdp-*/out/director.o 2>/dev/null | head -1)
[ -n "$obj" ] || { echo "no director.o: run cargo build -p xdp" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A TCP ACK from 10.201.0.2:40000 to the VIP 10.201.0.100:80, and one to
# 10.201.0.50 (not a VIP).
python3 - "$work" <<'PY'
import struct, sys
def pkt(dst):
    eth = bytes.fromhex("020000000003" "020000000002" "0800")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0,
                     bytes([10,201,0,2]), bytes(dst))
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 1, 5 << 4, 0x10, 65535, 0, 0)
    return eth + ip + tcp + bytes(6)
open(sys.argv[1] + "/vip.bin", "wb").write(pkt([10,201,0,100]))
open(sys.argv[1] + "/other.bin", "wb").write(pkt([10,201,0,50]))
PY
unshare -m bash -s "$obj" "$work" "$repeat" <<'SH'
set -euo pipefail
obj=$1 work=$2 repeat=$3
mount -t bpf bpf /sys/fs/bpf
d=/sys/fs/bpf/tdm
bpftool prog loadall "$obj" $d pinmaps $d/maps type xdp
m=$d/maps
# config: tun_v4 10.201.0.3, tun_v6 ::, mac 02:00:00:00:00:03, mtu 1600,
# max_table_size 13, has_v4 1
bpftool map update pinned $m/config key 0 0 0 0 value \
  10 201 0 3  0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0  2 0 0 0 0 3  0x40 0x06  13 0 0 0  1 0 0 0
for n in 0 1 2; do
  bpftool map update pinned $m/nodes key $n 0 0 0 value \
    10 201 0 $((11 + n)) 0 0 0 0 0 0 0 0 0 0 0 0  2 0 0 0 1 $((11 + n))  4 1
done
for s in 0 1 2 3 4 5 6; do
  bpftool map update pinned $m/ring key $s 0 0 0 value $((s % 3)) 0 0 0
done
vip() {  # forwarding: 0 L2 DSR, 1 IPIP, 2 GUE
  bpftool map update pinned $m/vips key 10 201 0 100 0 0 0 0 0 0 0 0 0 0 0 0 0 80 6 4 \
    value 0 0 0 0  7 0 0 0  "$1" 0 0 0
}
run() {
  bpftool prog run pinned $d/tandem_director data_in "$1" repeat "$repeat" | grep -E "Return|duration"
}
vip 0
echo "== VIP by L2 DSR, established flow (expect return value 3, XDP_TX)"
run "$work/vip.bin"
echo "== not a VIP (expect return value 2, XDP_PASS)"
run "$work/other.bin"
SH
