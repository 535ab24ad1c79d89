#!/usr/bin/env bash
# End-to-end test on a kind cluster: build and load the image, apply deploy/ (with an
# enforcedAllow ceiling that admits the orchestrator's pod address), start an orchestrator pod
# and an annotated model-backend pod, check that a pod asking for more does not start, check
# allowed and blocked egress between real pods, then delete the DaemonSet and check that
# running (and new) pods stay guarded.
#
# Needs docker (with a running daemon), kind and kubectl. Without them it prints SKIP and exits
# 0. Every target is inside the cluster: no traffic leaves the machine.
#
#   tests/kind/run.sh            # KEEP=1 keeps the cluster for inspection
set -euo pipefail

cluster="${CLUSTER:-egress-guard-e2e}"
image="egress-guard:dev"
agnhost="${AGNHOST_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.47}"
root="$(cd "$(dirname "$0")/../.." && pwd)"

skip() { echo "SKIP tests/kind: $*"; exit 0; }
command -v docker >/dev/null || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "no docker daemon reachable (docker info failed)"
command -v kind >/dev/null || skip "kind is not installed"
command -v kubectl >/dev/null || skip "kubectl is not installed"

ctx="kind-$cluster"
k() { kubectl --context "$ctx" "$@"; }
fail() { echo "FAIL: $*"; k -n egress-guard logs -l app.kubernetes.io/name=egress-guard --tail=50 || true; exit 1; }
pass=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }

cleanup() {
    rm -rf "${deploy:-}"
    if [[ "${KEEP:-0}" != 1 ]]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

echo "== cluster"
kind create cluster --name "$cluster" --wait 120s
node="$cluster-control-plane"
# Workloads on the control-plane node (single-node cluster).
k taint nodes --all node-role.kubernetes.io/control-plane- >/dev/null 2>&1 || true
# The operator's not-ready taint: the installer must remove it once chained.
k taint nodes "$node" egress-guard.io/not-ready=:NoSchedule --overwrite

echo "== image"
docker build -f "$root/install/Dockerfile" -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

echo "== deploy"
# The backends below add their orchestrator's pod address, which is in none of the config's
# networks: the operator's ceiling for model-serving (enforcedAllow) must permit it.
pod_cidr="$(k get node "$node" -o jsonpath='{.spec.podCIDR}')"
[[ -n "$pod_cidr" ]] || fail "$node has no podCIDR"
deploy="$(mktemp -d)"
cp "$root"/deploy/*.yaml "$deploy/"
python3 - "$deploy/configmap.yaml" "$pod_cidr tcp 8080" <<'PY'
import json, sys
path, entry = sys.argv[1], sys.argv[2]
head, block = open(path).read().split("plugin.json: |\n", 1)
conf = json.loads(block)
conf["enforcedAllow"] = ["@dns", entry]
body = "".join("    " + l + "\n" for l in json.dumps(conf, indent=2).splitlines())
open(path, "w").write(head + "plugin.json: |\n" + body)
PY
k apply -k "$deploy"
k -n egress-guard rollout status daemonset/egress-guard --timeout=120s
conflist="$(docker exec "$node" sh -c 'ls /etc/cni/net.d/*.conf* | sort | head -1')"
docker exec "$node" cat "$conflist" | python3 -c '
import json, sys
c = json.load(sys.stdin)
last = c["plugins"][-1]
assert last["type"] == "egress-guard", last
assert last["capabilities"]["io.kubernetes.cri.pod-annotations"] is True, last
' || fail "egress-guard is not the last plugin of $conflist"
ok "chained last in $conflist"
for _ in $(seq 30); do
    k get node "$node" -o jsonpath='{.spec.taints[*].key}' | grep -q egress-guard.io/not-ready || break
    sleep 1
done
k get node "$node" -o jsonpath='{.spec.taints[*].key}' | grep -q egress-guard.io/not-ready \
    && fail "the not-ready taint is still on $node"
ok "not-ready taint removed"

echo "== pods"
k create namespace orchestrator
k create namespace model-serving
server_pod() { # name namespace [annotation]
    k apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $2
  annotations: {${3:-}}
spec:
  containers:
  - name: main
    image: $agnhost
    args: ["netexec", "--http-port=8080"]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
EOF
}
server_pod orchestrator orchestrator
server_pod bystander orchestrator
k -n orchestrator wait --for=condition=Ready pod/orchestrator pod/bystander --timeout=120s
orch_ip="$(k -n orchestrator get pod orchestrator -o jsonpath='{.status.podIP}')"
bystander_ip="$(k -n orchestrator get pod bystander -o jsonpath='{.status.podIP}')"
node_ip="$(k get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
dns_ip="$(k -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIP}')"

server_pod backend model-serving "\"egress-guard.io/mode\": \"enforce\", \"egress-guard.io/allow\": \"$orch_ip tcp 8080\""
# The kubelet's readiness probe (from the node) must still reach it: replies are allowed.
k -n model-serving wait --for=condition=Ready pod/backend --timeout=120s || fail "backend not ready: probes blocked?"
backend_ip="$(k -n model-serving get pod backend -o jsonpath='{.status.podIP}')"
ok "backend ready (kubelet probes answered)"

connect() { # namespace pod target -> exit status of the connection attempt
    k -n "$1" exec "$2" -- /agnhost connect --timeout=3s "$3" >/dev/null 2>&1
}
expect_allowed() { connect "$@" && ok "allowed: $2 -> $3" || fail "$2 -> $3 should be allowed"; }
expect_blocked() { connect "$@" && fail "$2 -> $3 should be blocked" || ok "blocked: $2 -> $3"; }

check_guarded() { # pod
    expect_allowed model-serving "$1" "$orch_ip:8080"
    expect_blocked model-serving "$1" "$bystander_ip:8080"
    expect_blocked model-serving "$1" "$orch_ip:8081"
    expect_blocked model-serving "$1" "$node_ip:10250"
    expect_blocked model-serving "$1" "$dns_ip:53"
}

echo "== an annotation outside the operator's ceiling keeps the pod from starting"
server_pod wide model-serving "\"egress-guard.io/allow\": \"0.0.0.0/0\""
seen=""
for _ in $(seq 60); do
    k -n model-serving get events --field-selector involvedObject.name=wide \
        -o jsonpath='{.items[*].message}' | grep -q "outside the operator ceiling" && { seen=1; break; }
    sleep 1
done
[[ -n "$seen" ]] || fail "no sandbox error naming the operator ceiling for pod wide"
[[ "$(k -n model-serving get pod wide -o jsonpath='{.status.phase}')" == Pending ]] \
    || fail "pod wide is not Pending"
ok "pod outside the ceiling did not start (its event names the ceiling)"
k -n model-serving delete pod wide --wait=false >/dev/null

echo "== egress with the DaemonSet running"
expect_allowed orchestrator orchestrator "$backend_ip:8080"
check_guarded backend

echo "== DaemonSet deleted: pods stay guarded"
k -n egress-guard delete daemonset egress-guard --wait=true
k -n egress-guard wait --for=delete pod -l app.kubernetes.io/name=egress-guard --timeout=60s || true
docker exec "$node" cat "$conflist" | grep -q '"egress-guard"' || fail "entry removed on exit"
ok "entry still chained after the DaemonSet is gone"
check_guarded backend
server_pod backend2 model-serving "\"egress-guard.io/allow\": \"$orch_ip tcp 8080\""
k -n model-serving wait --for=condition=Ready pod/backend2 --timeout=120s || fail "backend2 not ready"
check_guarded backend2

echo "PASS tests/kind: $pass checks"
echo "$pass passed, 0 failed"
