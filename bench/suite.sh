#!/usr/bin/env bash
# bench/suite.sh - Tandem's end-to-end benchmark suite (issue 7), one command.
#
# Starts an nginx origin, then for each system under test (tandem node, tandem
# director in proxy mode, HAProxy `mode http`, HAProxy `mode tcp` +
# send-proxy-v2, nginx) measures every case for DURATION seconds, REPS times,
# with the system pinned to CPU $SUT_CPU and the load generator and origin on
# CPU $CLIENT_CPU. Prints one Markdown table (medians, min-max, ratios to
# HAProxy) and writes it, the raw rows and plot.png to bench/results/<stamp>/.
#
# Usage:
#   bench/suite.sh                    # full run: DURATION=10 REPS=3 (about 35 min)
#   QUICK=1 bench/suite.sh            # development: 2 s, 1 rep, fewer cases (about 4 min)
#   SYSTEMS="haproxy tandem-node" CASES="h1-100B|tls-h1-100B" bench/suite.sh
# Knobs: DURATION REPS CONNS=50 H2_STREAMS=10 IDLE_CONNS=10000 SUT_CPU=0
#   CLIENT_CPU=1 FOREIGN_MAX=15 RETRIES=1 QUIET_PCT=15 QUIET_MAX=20 OUT_DIR TANDEM_BIN NO_BUILD=1 KEEP_RUN=1
#   PYTHON=/usr/bin/python3 (Debian's, for python3-matplotlib)
#   SYSTEMS: haproxy haproxy-tcp nginx tandem-node tandem-director scale
#   CASES: an extended regex over case names (see cases_* below)
#
# Cases:
#   h1-100B, h1-16k   HTTP/1.1 keep-alive GET, wrk -t1 -c$CONNS --latency
#   h1-100B-pp        h1-100B, but the proxy sends PROXY v2 to the origin (its
#                     19090 listener): HAProxy `mode http` + send-proxy-v2 with
#                     `http-reuse never` (fe_http_pp, 19103; see haproxy.cfg for why),
#                     the same with `http-reuse always` as system haproxy-reuse-always
#                     (fe_http_pp_always, 19104), and a second tandem node (19310) whose
#                     one cluster has proxy_protocol = "v2". Not nginx: its http proxy
#                     cannot send the PROXY protocol (`proxy_protocol on` is stream-only).
#                     Checked first: /whoami from 127.0.0.7 must reach the origin as
#                     proxy_protocol_addr=127.0.0.7.
#   tls-h1-100B       the same over TLS 1.3 (ECDSA P-256 certificate made per run)
#   tls-new-full      wrk with `Connection: close` over TLS: one connection and one
#                     full handshake per request (wrk never resumes), $CONNS at a time
#   tls-seq-full      openssl s_time -new: full handshakes, one connection at a time
#   tls-seq-resumed   openssl s_time -reuse: resumed handshakes (session ticket),
#                     one at a time (h2load cannot resume); the row notes how many
#                     connections the server really resumed
#   h2-m10            h2load -t1 -c$CONNS -m$H2_STREAMS over TLS; p50/p99 from --log-file
#   idle-tls          $IDLE_CONNS TLS connections, one request each, then idle:
#                     RSS delta per connection (bench/idle_tls.py), one run
#   close-100B        (L4) wrk with `Connection: close`: one TCP connection per request
#   long-1MiB         (L4) keep-alive 1 MiB responses: transfer throughput
#   scale: tandem-node-wt{1,2,4} (worker threads) and tandem-node-r{10,1000}
#     (routes; the request hits the last route in precedence order), h1-100B.
#
# Everything is on 127.0.0.1, ports 19080-19444 (not the shared harness's); the
# PROXY-protocol check connects from 127.0.0.7. Every
# process started here is stopped by PID on exit, also on Ctrl-C. Every load run is
# bounded by -d/-D/-time plus `timeout`.
set -u -o pipefail

# What the caller set, for the record (before the defaults below).
INVOCATION="$(for v in QUICK DURATION REPS CONNS IDLE_CONNS SYSTEMS CASES QUIET_MAX QUIET_PCT RETRIES FOREIGN_MAX NO_BUILD TANDEM_BIN; do
    [[ -n "${!v+x}" ]] && printf '%s=%q ' "$v" "${!v}"; done)bench/suite.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
    DURATION="${DURATION:-2}"; REPS="${REPS:-1}"; IDLE_CONNS="${IDLE_CONNS:-1000}"
else
    DURATION="${DURATION:-10}"; REPS="${REPS:-3}"; IDLE_CONNS="${IDLE_CONNS:-10000}"
fi
CONNS="${CONNS:-50}"
H2_STREAMS="${H2_STREAMS:-10}"
SUT_CPU="${SUT_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
FOREIGN_MAX="${FOREIGN_MAX:-15}"
RETRIES="${RETRIES:-1}"
QUIET_PCT="${QUIET_PCT:-15}"   # before each run: wait until other load < this % of one core
QUIET_MAX="${QUIET_MAX:-20}"   # ... for at most this many seconds
SYSTEMS="${SYSTEMS:-haproxy haproxy-tcp nginx tandem-node tandem-director scale}"
CASES="${CASES:-.}"
PY="${PYTHON:-/usr/bin/python3}"
BIN="${TANDEM_BIN:-$ROOT/target/release/tandem}"
STAMP="$(date -u +%Y%m%d-%H%M%S)"
OUT="${OUT_DIR:-$HERE/results/$STAMP}"
HZ="$(getconf CLK_TCK)"

log() { printf '[suite %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "$*"; exit 1; }

# ------------------------------------------------------------ prerequisites
missing=()
for t in wrk:wrk h2load:nghttp2-client haproxy:haproxy nginx:nginx openssl:openssl \
         curl:curl taskset:util-linux ss:iproute2; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
"$PY" -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
if ((${#missing[@]})); then
    echo "missing: ${missing[*]}" >&2
    echo "install with: sudo apt-get install -y ${missing[*]}   (Debian 12 packages)" >&2
    exit 1
fi
(( $(nproc) >= 2 )) || die "needs 2 CPUs (system under test and load generator pinned apart)"
if [[ -z "${TANDEM_BIN:-}" && "${NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release -p tandem"
    if ! (cd "$ROOT" && cargo build --release -p tandem >&2); then
        [[ -x "$BIN" ]] || die "build failed and there is no $BIN"
        log "build failed: using the existing $BIN (built $(date -r "$BIN" -u +%FT%TZ))"
    fi
fi
[[ -x "$BIN" ]] || die "no tandem binary at $BIN"
# The idle case needs IDLE_CONNS descriptors on both sides; HAProxy reserves 2
# per connection (its maxconn is set to (ulimit -n - 100) / 2, at most 30000).
need_fds=$((IDLE_CONNS * 2 + 200))
if (( $(ulimit -n) < need_fds )); then
    ulimit -n "$need_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
(( $(ulimit -n) >= IDLE_CONNS + 1000 )) || die "ulimit -n $(ulimit -n): too low for IDLE_CONNS=$IDLE_CONNS (raise the hard limit)"

RUN="$(mktemp -d /tmp/tandem-suite.XXXXXX)"
mkdir -p "$OUT" "$RUN"/{tmp,www,raw}
chmod 755 "$RUN" "$RUN/www"   # nginx workers run as nobody
TSV="$OUT/runs.tsv"
NOTES="$OUT/notes.txt"; : > "$NOTES"
note() { printf '%s\n' "$*" | tee -a "$NOTES" >&2; }

# ------------------------------------------------------------ processes
STARTED=()   # every PID started here; stopped by PID only
CUR=""       # the system under test now running
ORIGIN=""
stop_pid() {
    local pid="$1" i
    [[ -z "$pid" ]] && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
cleanup() {
    local p
    for p in "${STARTED[@]}"; do stop_pid "$p"; done
    if [[ "${KEEP_RUN:-0}" == 1 ]]; then log "kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

wait_port() {  # wait_port PORT [PID]: until it accepts, at most 10 s
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        [[ -n "${2:-}" ]] && ! kill -0 "$2" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}
tree_pids() {
    local p c
    for p in "$@"; do
        echo "$p"
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree_pids "$c"; done
    done
}
tree_ticks() {  # utime+stime of a process tree (all threads), clock ticks
    local sum=0 p t
    for p in $(tree_pids "$1"); do
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}')
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}
tree_rss() {   # VmRSS of a process tree, KiB
    local sum=0 p r
    for p in $(tree_pids "$1"); do
        r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
        sum=$((sum + ${r:-0}))
    done
    echo "$sum"
}
core_snap() {  # "busy total" of the SUT core and of the client core
    awk -v a="cpu$SUT_CPU" -v b="cpu$CLIENT_CPU" '
        $1==a||$1==b { t=0; for(i=2;i<=9;i++) t+=$i; v[$1]=(t-$5-$6)" "t }
        END { print v[a], v[b] }' /proc/stat
}
NOFILE=$(ulimit -n)
MAXCONN=$(( (NOFILE - 100) / 2 < 30000 ? (NOFILE - 100) / 2 : 30000 ))
render() { sed -e "s#@RUN@#$RUN#g" -e "s#@MAXCONN@#$MAXCONN#g" -e "s#@NOFILE@#$NOFILE#g" "$HERE/conf/$1" > "$RUN/$1"; }

start_origin() {
    render origin.nginx.conf
    head -c 16384 /dev/zero | tr '\0' 'x' > "$RUN/www/16k"
    head -c 1048576 /dev/zero | tr '\0' 'y' > "$RUN/www/1m"
    taskset -c "$CLIENT_CPU" nginx -p "$RUN/" -e "$RUN/origin.error.log" -c "$RUN/origin.nginx.conf" &
    ORIGIN=$!; STARTED+=("$ORIGIN")
    wait_port 19080 "$ORIGIN" && wait_port 19090 "$ORIGIN" || { cat "$RUN/origin.error.log" >&2; die "origin failed"; }
    [[ "$(curl -s http://127.0.0.1:19080/1m | wc -c)" == 1048576 ]] || die "origin serves the wrong body"
}

node_config() {  # node_config FILE ROUTES [PP]: ROUTES-1 prefix routes that miss, then "/"
    # PP=v2: the one cluster sends PROXY v2 to the origin's proxy_protocol listener
    local f="$1" n="$2" pp="${3:-}" i
    {
        # Limits as for HAProxy and nginx here: 30000 connections, idle
        # keep-alive connections kept 120 s (the node's request-head timeout,
        # 10 s by default, also closes idle keep-alive connections).
        printf '[listener]\nmax_connections = 30000\nheader_read_timeout_ms = 120000\n\n'
        if [[ "$pp" == v2 ]]; then
            printf '[[clusters]]\nname = "origin"\nlb_policy = "round_robin"\nproxy_protocol = "v2"\nendpoints = [{ address = "127.0.0.1:19090", weight = 1 }]\n\n'
        else
            printf '[[clusters]]\nname = "origin"\nlb_policy = "round_robin"\nendpoints = [{ address = "127.0.0.1:19080", weight = 1 }]\n\n'
        fi
        for ((i = 1; i < n; i++)); do
            printf '[[routes]]\nname = "r%04d"\npath_prefix = "/svc%04d/"\ncluster = "origin"\n\n' "$i" "$i"
        done
        printf '[[routes]]\nname = "all"\npath_prefix = "/"\ncluster = "origin"\n\n'
        printf '[[certificates]]\nname = "bench"\nsni_names = ["localhost"]\ncert_file = "%s"\nkey_file = "%s"\ndefault = true\n' \
            "$RUN/ecdsa.crt" "$RUN/ecdsa.key"
    } > "$f"
}

WT_GLOBAL=""; WT_NODE=""
"$BIN" --help 2>/dev/null | grep -q -- '--worker-threads' && WT_GLOBAL=1
"$BIN" node --help 2>/dev/null | grep -q -- '--worker-threads' && WT_NODE=1

start_sut() {  # start_sut KIND [ARG]: sets CUR
    local kind="$1" arg="${2:-}" pre=() post=() envs=(RUST_LOG=warn)
    case "$kind" in
      haproxy)
        render haproxy.cfg
        taskset -c "$SUT_CPU" haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
        CUR=$!; STARTED+=("$CUR")
        wait_port 19100 "$CUR" && wait_port 19443 "$CUR" && wait_port 19102 "$CUR" \
            && wait_port 19103 "$CUR" && wait_port 19104 "$CUR" ;;
      nginx)
        render nginx-proxy.conf
        taskset -c "$SUT_CPU" nginx -p "$RUN/" -e "$RUN/nginx-proxy.error.log" -c "$RUN/nginx-proxy.conf" &
        CUR=$!; STARTED+=("$CUR")
        wait_port 19200 "$CUR" && wait_port 19444 "$CUR" ;;
      node)   # arg: routes[:threads]
        local routes="${arg%%:*}" threads=""
        [[ "$arg" == *:* ]] && threads="${arg#*:}"
        node_config "$RUN/node.toml" "$routes"
        if [[ -n "$threads" ]]; then
            if [[ -n "$WT_GLOBAL" ]]; then pre=(--worker-threads "$threads")
            elif [[ -n "$WT_NODE" ]]; then post=(--worker-threads "$threads")
            elif [[ "$threads" == 1 ]]; then envs+=(TANDEM_SINGLE_THREAD=1)
            else return 2; fi
        fi
        env "${envs[@]}" taskset -c "$SUT_CPU" "$BIN" "${pre[@]}" node --id bench --config "$RUN/node.toml" \
            --listen 127.0.0.1:19301 --plain-listen 127.0.0.1:19300 --proxy-protocol off "${post[@]}" \
            >"$RUN/node.log" 2>&1 &
        CUR=$!; STARTED+=("$CUR")
        wait_port 19300 "$CUR" && wait_port 19301 "$CUR" ;;
      node-pp)  # a second node for h1-100B-pp, so the node's other cases keep their config
        node_config "$RUN/node-pp.toml" 1 v2
        env "${envs[@]}" taskset -c "$SUT_CPU" "$BIN" node --id bench-pp --config "$RUN/node-pp.toml" \
            --listen 127.0.0.1:19311 --plain-listen 127.0.0.1:19310 --proxy-protocol off \
            >"$RUN/node-pp.log" 2>&1 &
        CUR=$!; STARTED+=("$CUR")
        wait_port 19310 "$CUR" && wait_port 19311 "$CUR" ;;
      director)
        printf '[[services]]\nname = "bench"\naddress = "127.0.0.1:19302"\nnode_pool = "default"\n\n[[nodes]]\nid = "origin"\naddress = "127.0.0.1:19090"\nweight = 100\nstate = "ACTIVE"\n' > "$RUN/director.toml"
        env "${envs[@]}" taskset -c "$SUT_CPU" "$BIN" director --id bench --config "$RUN/director.toml" \
            --accept-loops 1 --health-interval-ms 60000 >"$RUN/director.log" 2>&1 &
        CUR=$!; STARTED+=("$CUR")
        wait_port 19302 "$CUR" ;;
    esac
}
stop_sut() { stop_pid "$CUR"; CUR=""; }

# ------------------------------------------------------------ one measurement
to_ms() {
    awk -v v="$1" 'BEGIN{ if (v=="") {print "NA"; exit}
        n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /m$/) n*=60000; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}
to_mbs() {
    awk -v v="$1" 'BEGIN{ if (v=="") {print "NA"; exit}
        n=v+0; if (v ~ /GB/) n*=1024; else if (v ~ /KB/) n/=1024; else if (v !~ /MB/) n/=1048576; printf "%.1f", n }'
}
REP=1
wait_quiet() {  # before a run: wait (at most QUIET_MAX s) until both cores are idle
    local i s0 s1 busy waited=0
    for i in $(seq $((QUIET_MAX / 2 + 1))); do
        s0=$(core_snap); sleep 0.5; s1=$(core_snap)
        busy=$(awk -v s0="$s0" -v s1="$s1" 'BEGIN{split(s0,a," "); split(s1,b," ");
              t=(b[2]-a[2])+(b[4]-a[4]); printf "%d", (t>0 ? 200*((b[1]-a[1])+(b[3]-a[3]))/t : 0)}')
        (( busy <= QUIET_PCT )) && { (( waited )) && log "  quiet after ${waited}s"; return 0; }
        (( waited == 0 )) && log "  box busy (${busy}% of a core outside the benchmark): waiting up to ${QUIET_MAX}s"
        sleep 1.5; waited=$((waited + 2))
    done
    log "  still busy after ${QUIET_MAX}s: measuring anyway (see foreign %)"
}
measure() {  # measure SYSTEM CASE TOOL TARGET [extra args]
    local sys="$1" cse="$2" tool="$3" target="$4"; shift 4
    [[ "$cse" =~ $CASES ]] || return 0
    local attempt raw t0 t1 s0 s1 w0 w1 req rps mbs p50 p99 avg err rss note c="$CONNS" row foreign
    for attempt in $(seq $((RETRIES + 1))); do
        raw="$RUN/raw/$sys.$cse.r$REP.a$attempt.txt"; rm -f "$RUN/h2.log"
        wait_quiet
        t0=$(tree_ticks "$CUR"); s0=$(core_snap); w0=$(date +%s.%N)
        case "$tool" in
          wrk)    timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$c" -d"${DURATION}s" --latency "$@" "$target" >"$raw" 2>&1 ;;
          h2load) timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" h2load -t1 -c"$c" -m"$H2_STREAMS" -D"$DURATION" \
                      --log-file="$RUN/h2.log" "$target" >"$raw" 2>&1 ;;
          stime)  c=1; timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" openssl s_time -connect "$target" \
                      -time "$DURATION" -www /100 "$@" >"$raw" 2>&1 ;;
        esac
        w1=$(date +%s.%N); s1=$(core_snap); t1=$(tree_ticks "$CUR"); rss=$(tree_rss "$CUR")
        note=""
        case "$tool" in
          wrk)
            rps=$(awk '/^Requests\/sec:/ {print $2}' "$raw")
            req=$(awk '/requests in/ {print $1}' "$raw")
            mbs=$(to_mbs "$(awk '/^Transfer\/sec:/ {print $2}' "$raw")")
            err=$(awk '/Socket errors:/ {gsub(",",""); e+=$4+$6+$8+$10} /Non-2xx/ {e+=$NF} END {print e+0}' "$raw")
            avg=$(to_ms "$(awk '$1=="Latency" {print $2; exit}' "$raw")")
            p50=$(to_ms "$(awk '$1=="50%" {print $2}' "$raw")")
            p99=$(to_ms "$(awk '$1=="99%" {print $2}' "$raw")") ;;
          h2load)
            rps=$(awk '/^finished in/ {gsub(",","",$4); print $4}' "$raw")
            req=$(awk '/^requests:/ {print $8}' "$raw")
            mbs=$(to_mbs "$(awk '/^finished in/ {print $6}' "$raw")")
            err=$(awk '/^requests:/ {e=$10+$12+$14} /^status codes:/ {e+=$5+$7+$9} END {print e+0}' "$raw")
            read -r p50 p99 avg < <(awk -F'\t' '$2==200 {print $3}' "$RUN/h2.log" 2>/dev/null | sort -n |
                awk '{a[NR]=$1; s+=$1} END { if (NR==0) {print "NA NA NA"; exit}
                     i=int(NR*0.5); if (i<1) i=1; j=int(NR*0.99); if (j<1) j=1;
                     printf "%.3f %.3f %.3f\n", a[i]/1000, a[j]/1000, s/NR/1000 }') ;;
          stime)
            req=$(awk '/connections in [0-9.]+s;/ {print $1; exit}' "$raw")
            rps=$(awk -v n="${req:-0}" -v a="$w0" -v b="$w1" 'BEGIN {printf "%.1f", n/(b-a)}')
            mbs=NA; p50=NA; p99=NA; avg=NA
            err=$(grep -c -i 'error' "$raw")
            # s_time prints one character per connection: 'r' when the session was resumed.
            local resumed; resumed=$(grep -E '^[*rt3]+$' "$raw" | tr -cd 'r' | wc -c)
            note="resumed $resumed of ${req:-0}" ;;
        esac
        [[ -z "$rps" || -z "$req" ]] && { log "no result for $sys $cse: $(tail -3 "$raw" | tr '\n' ' ')"; rps=NA; req=0; }
        row=$(awk -v sys="$sys" -v cse="$cse" -v rep="$REP" -v tool="$tool" -v c="$c" -v D="$DURATION" \
            -v req="${req:-0}" -v rps="$rps" -v mbs="$mbs" -v p50="$p50" -v p99="$p99" -v avg="$avg" \
            -v err="${err:-0}" -v t0="$t0" -v t1="$t1" -v hz="$HZ" -v w0="$w0" -v w1="$w1" \
            -v s0="$s0" -v s1="$s1" -v rss="$rss" -v note="$note" 'BEGIN{
            cpu=(t1-t0)/hz; wall=w1-w0; split(s0,a," "); split(s1,b," ");
            u0=(b[2]-a[2])>0 ? 100*(b[1]-a[1])/(b[2]-a[2]) : 0;
            u1=(b[4]-a[4])>0 ? 100*(b[3]-a[3])/(b[4]-a[4]) : 0;
            f=u0-100*cpu/wall; if (f<0) f=0;
            per=(req>0) ? cpu/req*100000 : 0;
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.3f\t%s\t%s\t%.1f\t%.1f\t%.1f\t%s\n",
              sys,cse,rep,tool,c,D,req,rps,mbs,p50,p99,avg,err,cpu,per,rss,"NA",u0,u1,f,note }')
        foreign=$(awk -F'\t' '{printf "%d", $20}' <<<"$row")
        if (( foreign > FOREIGN_MAX && attempt <= RETRIES )); then
            log "  $sys $cse: ${foreign}% of the SUT core went to other processes: measuring again"
            continue
        fi
        printf '%s\n' "$row" >> "$TSV"
        awk -F'\t' '{printf "  %-20s %-16s r%s %10s rps  p99=%sms  cpu/100k=%ss  rss=%sKiB  core%s/%s=%s/%s%%  foreign=%s%%  err=%s %s\n",
            $1,$2,$3,$8,$11,$15,$16,'"$SUT_CPU"','"$CLIENT_CPU"',$18,$19,$20,$13,$21}' <<<"$row" >&2
        return 0
    done
}
measure_idle() {  # measure_idle SYSTEM PORT: one run, after the others (RSS does not shrink back)
    local sys="$1" port="$2" out pids
    [[ "idle-tls" =~ $CASES ]] || return 0
    pids=$(tree_pids "$CUR" | paste -sd,)
    out=$(timeout 300 taskset -c "$CLIENT_CPU" "$PY" "$HERE/idle_tls.py" --port "$port" \
        --count "$IDLE_CONNS" --pids "$pids" 2>&1 | tail -1)
    note "idle-tls $sys: $out"
    "$PY" - "$sys" "$IDLE_CONNS" "$out" >> "$TSV" <<'PYEOF' || log "idle-tls $sys: no result"
import json, sys
sys_, n, raw = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.loads(raw)
kb = r["kb_per_conn"] if r["kb_per_conn"] is not None else "NA"
note = f"{r['established_at_sample']} of {r['requested']} open at sample; rss {r['rss_before_kb']}->{r['rss_after_kb']} KiB; {r['errors']} errors"
print("\t".join(map(str, [sys_, "idle-tls", 1, "idle_tls.py", n, "NA", r["opened"], "NA", "NA", "NA", "NA", "NA",
      r["errors"], "NA", "NA", r["rss_after_kb"], kb, "NA", "NA", "NA", note])))
PYEOF
}

# ------------------------------------------------------------ cases
l7_cases() {  # l7_cases SYSTEM PLAIN_PORT TLS_PORT
    local sys="$1" p="$2" t="$3"
    measure "$sys" h1-100B wrk "http://127.0.0.1:$p/100"
    [[ "$QUICK" == 1 ]] || measure "$sys" h1-16k wrk "http://127.0.0.1:$p/16k"
    measure "$sys" tls-h1-100B wrk "https://127.0.0.1:$t/100"
    measure "$sys" tls-new-full wrk "https://127.0.0.1:$t/100" -H 'Connection: close'
    [[ "$QUICK" == 1 ]] || measure "$sys" tls-seq-full stime "127.0.0.1:$t" -new
    measure "$sys" tls-seq-resumed stime "127.0.0.1:$t" -reuse
    measure "$sys" h2-m10 h2load "https://127.0.0.1:$t/100"
}
l4_cases() {  # l4_cases SYSTEM PORT
    local sys="$1" p="$2"
    measure "$sys" h1-100B wrk "http://127.0.0.1:$p/100"
    [[ "$QUICK" == 1 ]] || measure "$sys" h1-16k wrk "http://127.0.0.1:$p/16k"
    measure "$sys" close-100B wrk "http://127.0.0.1:$p/100" -H 'Connection: close'
    measure "$sys" long-1MiB wrk "http://127.0.0.1:$p/1m"
}
warm() { timeout 10 taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d1s "$1" >/dev/null 2>&1; }
reps() {  # reps FUNCTION ARGS...: REPS rounds, interleaved across the cases
    for REP in $(seq "$REPS"); do "$@"; done
}
check_body() {  # check_body NAME URL BYTES: the system really proxies
    local got; got=$(curl -sk --max-time 5 "$2" | wc -c)
    [[ "$got" == "$3" ]] || { log "$1: $2 gave $got bytes, not $3"; return 1; }
}
check_pp() {  # check_pp NAME PORT: the origin's PROXY v2 listener sees the client's address
    # The client binds 127.0.0.7, so an origin that saw the proxy's own
    # address (127.0.0.1) in place of the PROXY header's would fail.
    local got
    got=$(curl -s --max-time 5 --interface 127.0.0.7 "http://127.0.0.1:$2/whoami")
    note "PP check $1: origin /whoami said: ${got:-nothing}"
    [[ "$got" == "proxy_protocol_addr=127.0.0.7 "* ]] || { log "$1: PROXY v2 check failed: h1-100B-pp not measured"; return 1; }
    check_body "$1" "http://127.0.0.1:$2/100" 100
}
pp_case() {  # pp_case SYSTEM PORT: h1-100B-pp (PROXY v2 to the origin), REPS runs
    local sys="$1" p="$2"
    [[ "h1-100B-pp" =~ $CASES ]] || return 0
    check_pp "$sys" "$p" || return 0
    warm "http://127.0.0.1:$p/100"
    for REP in $(seq "$REPS"); do measure "$sys" h1-100B-pp wrk "http://127.0.0.1:$p/100"; done
}

# ------------------------------------------------------------ main
for port in 19080 19090 19100 19102 19103 19104 19443 19200 19444 19300 19301 19302 19310 19311; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is in use (a leftover run?)"
done
printf 'system\tcase\trep\ttool\tconns\tduration_s\trequests\trps\tmb_s\tp50_ms\tp99_ms\tavg_ms\terrors\tsut_cpu_s\tcpu_s_per_100k\trss_kb\tkb_per_conn\tsut_core_pct\tclient_core_pct\tforeign_pct\tnote\n' > "$TSV"
note "host: $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")"
note "versions: $("$BIN" --version); $(haproxy -v | head -1 | cut -d' ' -f1-3); $(nginx -v 2>&1 | cut -d' ' -f3-); wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2); $(h2load --version); $(openssl version | cut -d' ' -f1-2); $(rustc --version 2>/dev/null | cut -d' ' -f1-2)"
note "tandem binary: $BIN, git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'), built $(date -r "$BIN" -u +%FT%TZ)"
note "params: ulimit -n $NOFILE (HAProxy maxconn $MAXCONN) QUICK=$QUICK DURATION=${DURATION}s REPS=$REPS CONNS=$CONNS H2_STREAMS=$H2_STREAMS IDLE_CONNS=$IDLE_CONNS SUT_CPU=$SUT_CPU CLIENT_CPU=$CLIENT_CPU(+origin) FOREIGN_MAX=$FOREIGN_MAX RETRIES=$RETRIES QUIET_PCT=$QUIET_PCT QUIET_MAX=$QUIET_MAX SYSTEMS='$SYSTEMS' CASES='$CASES'"
note "command: $INVOCATION"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$RUN/ecdsa.key" \
    -out "$RUN/ecdsa.crt" -days 7 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
cat "$RUN/ecdsa.crt" "$RUN/ecdsa.key" > "$RUN/ecdsa.pem"
start_origin
log "origin up (pid $ORIGIN, CPU $CLIENT_CPU); results in $OUT"

for s in $SYSTEMS; do
    case "$s" in
      haproxy|haproxy-tcp)
        start_sut haproxy || { log "haproxy did not start: $(tail -3 "$RUN/haproxy.log")"; stop_sut; continue; }
        log "== $s (pid $CUR)"
        if [[ "$s" == haproxy ]]; then
            check_body haproxy https://127.0.0.1:19443/16k 16384 || { stop_sut; continue; }
            warm http://127.0.0.1:19100/100
            reps l7_cases haproxy 19100 19443
            pp_case haproxy 19103
            pp_case haproxy-reuse-always 19104
            measure_idle haproxy 19443
        else
            check_body haproxy-tcp http://127.0.0.1:19102/1m 1048576 || { stop_sut; continue; }
            warm http://127.0.0.1:19102/100
            reps l4_cases haproxy-tcp 19102
        fi
        stop_sut ;;
      nginx)
        start_sut nginx || { log "nginx did not start"; stop_sut; continue; }
        log "== nginx (pid $CUR)"
        check_body nginx https://127.0.0.1:19444/16k 16384 || { stop_sut; continue; }
        warm http://127.0.0.1:19200/100
        reps l7_cases nginx 19200 19444
        measure_idle nginx 19444
        [[ "h1-100B-pp" =~ $CASES ]] && note "h1-100B-pp nginx: not measured: nginx's http proxy cannot send the PROXY protocol to an upstream (\`proxy_protocol on\` exists only in the stream module)"
        stop_sut ;;
      tandem-node)
        start_sut node 1 || { log "node did not start: $(tail -3 "$RUN/node.log")"; stop_sut; continue; }
        log "== tandem-node (pid $CUR)"
        check_body tandem-node https://127.0.0.1:19301/16k 16384 || { stop_sut; continue; }
        warm http://127.0.0.1:19300/100
        reps l7_cases tandem-node 19300 19301
        measure_idle tandem-node 19301
        stop_sut
        if [[ "h1-100B-pp" =~ $CASES ]]; then
            start_sut node-pp || { log "node-pp did not start: $(tail -3 "$RUN/node-pp.log")"; stop_sut; continue; }
            log "== tandem-node, second instance with a PROXY v2 cluster (pid $CUR)"
            pp_case tandem-node 19310
            stop_sut
        fi ;;
      tandem-director)
        start_sut director || { log "director did not start: $(tail -3 "$RUN/director.log")"; stop_sut; continue; }
        log "== tandem-director (pid $CUR)"
        check_body tandem-director http://127.0.0.1:19302/1m 1048576 || { stop_sut; continue; }
        warm http://127.0.0.1:19302/100
        reps l4_cases tandem-director 19302
        stop_sut ;;
      scale)
        variants="1:1 1:2 1:4 10 1000"; [[ "$QUICK" == 1 ]] && variants="1:1 1000"
        for v in $variants; do
            if [[ "$v" == *:* ]]; then name="tandem-node-wt${v#*:}"; else name="tandem-node-r$v"; fi
            start_sut node "$v"; rc=$?
            if (( rc == 2 )); then note "$name: not available (this tandem has no --worker-threads)"; continue; fi
            (( rc == 0 )) || { log "$name did not start: $(tail -3 "$RUN/node.log")"; stop_sut; continue; }
            log "== $name (pid $CUR, threads: $(ls /proc/"$CUR"/task | wc -l))"
            check_body "$name" http://127.0.0.1:19300/100 100 || { stop_sut; continue; }
            warm http://127.0.0.1:19300/100
            for REP in $(seq "$REPS"); do measure "$name" h1-100B wrk "http://127.0.0.1:19300/100"; done
            stop_sut
        done ;;
      *) log "unknown system $s" ;;
    esac
done

"$PY" "$HERE/suite.py" "$TSV" --notes "$NOTES" --table "$OUT/table.md" --plot "$OUT/plot.png"
log "results: $OUT/table.md  $OUT/plot.png  (raw rows: $TSV)"
