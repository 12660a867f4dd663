#!/usr/bin/env bash
# End-to-end test of the Kubernetes deployment on kind: creates a cluster
# (1 control plane, 3 workers), builds the image and loads it, applies the
# manifests, waits for every tier, sends HTTPS requests through a director,
# checks that the demo app saw the client's own address (X-Forwarded-For and
# PROXY v2), drains a node (no new requests reach it), deletes its pod
# (graceful termination removes it from control) and deletes the cluster.
#
#   deploy/kind/e2e.sh            (from anywhere; needs docker, kind, kubectl)
#
# Environment: TANDEM_KIND_CLUSTER (cluster name, default tandem-e2e),
# KEEP_CLUSTER=1 (leave the cluster up for a look), KIND_NODE_IMAGE (a
# kindest/node image, Kubernetes >= 1.29), SKIP_BUILD=1 (use an existing
# tandem:dev image).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cluster=${TANDEM_KIND_CLUSTER:-tandem-e2e}
image=tandem:dev # the manifests name this tag
ns=tandem
nodeport=30443
work=$(mktemp -d)
ok=0

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not on the PATH"
done

cleanup() {
    if [ "$ok" != 1 ] && kind get clusters 2>/dev/null | grep -qx "$cluster"; then
        printf '\n==> diagnostics\n' >&2
        kubectl -n "$ns" get pods,svc,endpoints,jobs -o wide >&2 || true
        kubectl -n "$ns" describe pods >&2 || true
        kubectl -n "$ns" logs --all-containers --prefix --tail=50 -l app.kubernetes.io/part-of=tandem >&2 || true
        kubectl -n "$ns" get events --sort-by=.lastTimestamp >&2 || true
    fi
    if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
        echo "cluster $cluster kept (kind delete cluster --name $cluster)"
    else
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# tandemctl inside the control pod, where control listens on 127.0.0.1:9400,
# with the operators' admin token.
ctl() {
    kubectl -n "$ns" exec statefulset/tandem-control -c control -- \
        env TANDEM_TOKEN_FILE=/etc/tandem/tokens/admin.token tandemctl "$@"
}

# Polls "$@" until it succeeds, for up to $1 seconds.
eventually() {
    local secs=$1
    shift
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 2
    done
}

step "kind cluster $cluster"
kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
kind create cluster --name "$cluster" --config "$here/cluster.yaml" --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
kubectl config use-context "kind-$cluster" >/dev/null

step "image $image"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    docker build -f "$root/deploy/docker/Dockerfile" -t "$image" "$root"
fi
kind load docker-image "$image" --name "$cluster"

step "secrets: certificate and tokens"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
# The demo CA and certificate, made by the image's own tool.
docker run --rm --user "$(id -u):$(id -g)" -v "$work:/pki" --entrypoint tandem-seed \
    "$image" gen-cert /pki tandem.test,localhost
kubectl -n "$ns" create secret generic tandem-tls --type=kubernetes.io/tls \
    --from-file=tls.crt="$work/tls.crt" --from-file=tls.key="$work/tls.key" \
    --from-file=ca.crt="$work/ca.pem"
token() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
admin_token=$(token)
register_token=$(token)
# admin.token: control's admin tokens (the operators' first: tandemctl sends
# the first line's); register.token: the node pods' own admin-role token.
kubectl -n "$ns" create secret generic tandem-tokens \
    --from-literal=admin.token="$(printf 'admin %s\nnode-register %s\n' "$admin_token" "$register_token")" \
    --from-literal=register.token="node-register $register_token" \
    --from-literal=subscriber.token="subscriber $(token)"

step "apply manifests"
kubectl apply -k "$root/deploy/kind/manifests"

step "wait: control, seed, apps, nodes, directors"
kubectl -n "$ns" rollout status statefulset/tandem-control --timeout=180s
kubectl -n "$ns" wait --for=condition=complete job/tandem-seed --timeout=180s
kubectl -n "$ns" rollout status deployment/tandem-demo-app --timeout=180s
kubectl -n "$ns" rollout status deployment/tandem-node --timeout=240s
kubectl -n "$ns" rollout status daemonset/tandem-director --timeout=180s
node_count() {
    local out
    out=$(ctl node list -o json) && grep -c '"id"' <<< "$out"
}
eventually 60 test "$(node_count)" = 3 || fail "control does not list 3 nodes"
ctl status

# A client container on the kind network: its own address is what the app
# must report. It connects to a worker's NodePort; externalTrafficPolicy:
# Local hands the connection to that worker's director without SNAT.
workers=$(kind get nodes --name "$cluster" | grep -v control-plane | sort)
client() { # client WORKER_IP PATH -> "CLIENT_IP<newline>HEADERS+BODY"
    # As the invoking user: $work (mktemp -d) is private to it. The kind
    # network is dual-stack; the request goes over IPv4, so report that one.
    docker run --rm --network kind --user "$(id -u):$(id -g)" -v "$work:/pki:ro" \
        --entrypoint bash "$image" -c \
        'hostname -i | tr " " "\n" | grep -m1 -E "^[0-9.]+$"
         curl -sS --fail --max-time 10 -i --cacert /pki/ca.pem \
             --resolve "tandem.test:'"$nodeport"':$1" "https://tandem.test:'"$nodeport"'$2"' \
        _ "$1" "$2"
}
json_field() { sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p'; }

step "requests through every worker's director"
for w in $workers; do
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$w")
    for path in / /pp/; do
        out=$(client "$ip" "$path") || fail "request to $w ($ip) $path failed"
        me=$(head -n1 <<< "$out")
        saw=$(json_field client <<< "$out")
        src=$(json_field client_source <<< "$out")
        served_by=$(sed -n 's/^x-tandem-node: *\([^[:space:]]*\).*/\1/Ip' <<< "$out")
        echo "$w $path: client $me, app saw $saw ($src), node $served_by"
        [ "$saw" = "$me" ] || fail "the app saw $saw, the client is $me"
        case "$path" in
            /) [ "$src" = x-forwarded-for ] || fail "expected X-Forwarded-For, got $src" ;;
            /pp/) [ "$src" = proxy-protocol ] || fail "expected PROXY v2, got $src" ;;
        esac
    done
done

step "the host port mapping (127.0.0.1:8443 -> worker NodePort)"
curl -sS --fail --max-time 10 --cacert "$work/ca.pem" \
    --resolve tandem.test:8443:127.0.0.1 https://tandem.test:8443/ >/dev/null ||
    fail "https://tandem.test:8443/ on the host failed"

step "drain a node"
first_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(head -n1 <<< "$workers")")
victim=$(client "$first_ip" / | sed -n 's/^x-tandem-node: *\([^[:space:]]*\).*/\1/Ip')
[ -n "$victim" ] || fail "no x-tandem-node header"
ctl node drain "$victim"
drained() {
    local out
    out=$(ctl node list -o json) && tr -d ' \n' <<< "$out" | grep -q "\"id\":\"$victim\"[^}]*\"state\":\"DRAINING\""
}
eventually 30 drained || fail "$victim is not DRAINING"
sleep 3 # the directors' watch streams and health checks
for _ in $(seq 1 12); do
    served_by=$(client "$first_ip" / | sed -n 's/^x-tandem-node: *\([^[:space:]]*\).*/\1/Ip')
    [ "$served_by" != "$victim" ] || fail "a new request reached the drained node $victim"
done
echo "no new request reached $victim"
ctl status

step "delete the drained node's pod (graceful termination)"
kubectl -n "$ns" delete pod "$victim" --wait=true --timeout=90s
kubectl -n "$ns" rollout status deployment/tandem-node --timeout=180s
gone() {
    local out
    out=$(ctl node list -o json) && ! grep -q "\"$victim\"" <<< "$out"
}
eventually 60 gone || fail "$victim is still registered in control"
eventually 60 test "$(node_count)" = 3 || fail "the replacement node did not register"
out=$(client "$first_ip" /) || fail "request after the pod replacement failed"
echo "after replacement: $(json_field instance <<< "$out") via $(sed -n 's/^x-tandem-node: *\([^[:space:]]*\).*/\1/Ip' <<< "$out")"
ctl status

ok=1
step "PASS"
