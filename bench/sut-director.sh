#!/usr/bin/env bash
# SUT hook for ../shared/bench/l7.sh: a Tandem director in proxy mode from a
# static config. VIP 127.0.0.1:${SUT_PP_PORT}; its one "node" is the
# harness's PROXY-protocol origin ($BENCH_ORIGIN_PP), so the director does
# exactly what HAProxy `mode tcp` + `send-proxy-v2` does in the
# haproxy-pp-tcp row.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${TANDEM_BIN:-$here/../target/release/tandem}"
cfg="${BENCH_RUN_DIR:-/tmp}/tandem-director.toml"
cat > "$cfg" <<TOML
[[services]]
name = "bench"
address = "127.0.0.1:${SUT_PP_PORT:?}"
node_pool = "default"

[[nodes]]
id = "origin"
address = "${BENCH_ORIGIN_PP:?}"
weight = 100
state = "ACTIVE"
TOML
# One accept loop and one worker thread: the harness pins the SUT to one core.
exec "$bin" director --id bench --config "$cfg" --accept-loops "${ACCEPT_LOOPS:-1}" \
    --health-interval-ms 60000 ${DIRECTOR_FLAGS:-}
