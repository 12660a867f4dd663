#!/usr/bin/env bash
# SUT hook for ../shared/bench/l7.sh (sut-pp cell): a Tandem node whose
# cluster sends PROXY v2 to the harness's proxy_protocol origin
# ($BENCH_ORIGIN_PP); plain HTTP on ${SUT_PP_PORT}. Compared with HAProxy
# `mode http` + `send-proxy-v2` (haproxy-pp-http).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${TANDEM_BIN:-$here/../target/release/tandem}"
cfg="${BENCH_RUN_DIR:-/tmp}/tandem-node-pp.toml"
cat > "$cfg" <<TOML
[[clusters]]
name = "origin-pp"
lb_policy = "round_robin"
proxy_protocol = "v2"
endpoints = [{ address = "${BENCH_ORIGIN_PP:?}", weight = 1 }]

[[routes]]
name = "all"
cluster = "origin-pp"
TOML
# The TLS listener is required by the command line; nothing uses it here.
exec "$bin" node --id bench --config "$cfg" --listen 127.0.0.1:0 \
    --plain-listen "127.0.0.1:${SUT_PP_PORT:?}" --proxy-protocol off ${NODE_FLAGS:-}
