#!/usr/bin/env bash
# Runs every test of the project (as root on Debian 12): formatting, lints, unit and golden
# tests, root integration tests on a node built from network namespaces with the reference CNI
# plugins, the containerd CRI end-to-end suite, manifest validation and the kind e2e script
# (which skips where Docker and kind are missing, as on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  bash tests/deps.sh
  # Root tests must not skip silently here: a missing tool is a failure.
  export EGRESS_GUARD_CRI_REQUIRED=1
else
  echo "not root: root tests will print SKIP and only the unprivileged tests run" >&2
fi
cargo fmt --check
cargo clippy --quiet --all-targets --features root-tests -- -D warnings
cargo test --features root-tests -- --test-threads 2

# Manifest schema validation (kubernetes-validate from PyPI, in a venv under target/).
if [ ! -x target/kv/bin/kubernetes-validate ]; then
  (python3 -m venv target/kv && target/kv/bin/pip install -q kubernetes-validate) \
    || echo "SKIP: could not install kubernetes-validate" >&2
fi
KUBERNETES_VALIDATE="$PWD/target/kv/bin/kubernetes-validate" bash deploy/check.sh
bash tests/kind/run.sh
echo "all tests passed"
