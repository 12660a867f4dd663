#!/usr/bin/env bash
# SUT hook for ../shared/bench/l7.sh: a Tandem node from a static config.
#   plain HTTP on ${SUT_PORT}, TLS on ${SUT_TLS_PORT} (the harness's ECDSA
#   cert), both routing everything to $BENCH_ORIGIN.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${TANDEM_BIN:-$here/../target/release/tandem}"
cfg="${BENCH_RUN_DIR:-/tmp}/tandem-node.toml"
cat > "$cfg" <<TOML
[[clusters]]
name = "origin"
lb_policy = "round_robin"
endpoints = [{ address = "${BENCH_ORIGIN:?}", weight = 1 }]

[[routes]]
name = "all"
cluster = "origin"

[[certificates]]
name = "bench"
sni_names = ["localhost"]
cert_file = "${BENCH_CERT:?}"
key_file = "${BENCH_KEY:?}"
default = true
TOML
exec "$bin" node --id bench --config "$cfg" --listen "127.0.0.1:${SUT_TLS_PORT:?}" \
    ${SUT_PORT:+--plain-listen 127.0.0.1:${SUT_PORT}} --proxy-protocol off ${NODE_FLAGS:-}
