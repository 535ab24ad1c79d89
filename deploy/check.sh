#!/usr/bin/env bash
# Validates deploy/: renders the kustomization, checks every object against the Kubernetes
# OpenAPI schemas (kubernetes-validate --strict, from PyPI), checks that the ConfigMap's
# plugin.json is JSON, and runs `kubectl apply --dry-run=client` when an API server is
# reachable (kubectl needs one for REST mapping even in client dry-run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

if command -v kubectl >/dev/null; then
    kubectl kustomize "$here" >"$out"
    echo "kustomize render: ok"
else
    echo "SKIP kustomize render: kubectl not installed (the files are validated one by one)"
    : >"$out"
fi

validate="${KUBERNETES_VALIDATE:-kubernetes-validate}"
if command -v "$validate" >/dev/null; then
    if [ -s "$out" ]; then "$validate" --strict --quiet "$out"; fi
    "$validate" --strict --quiet "$here"/[!k]*.yaml
    echo "schema (kubernetes-validate --strict): ok"
else
    echo "SKIP schema check: kubernetes-validate not installed (pip install kubernetes-validate)"
fi

python3 - "$here/configmap.yaml" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
block = text.split("plugin.json: |", 1)[1]
lines = [l[4:] for l in block.splitlines()[1:] if l.startswith("    ") or not l.strip()]
json.loads("\n".join(lines))
print("configmap plugin.json: ok")
PY

if command -v kubectl >/dev/null && kubectl version --request-timeout=3s >/dev/null 2>&1; then
    kubectl apply --dry-run=client -f "$out"
    echo "kubectl apply --dry-run=client: ok"
else
    echo "SKIP kubectl apply --dry-run=client: no reachable API server"
fi
