#!/usr/bin/env bash
# Runs every test of the project (as root on Debian 12): formatting, lints, unit and golden
# tests, root integration tests on a node built from network namespaces with the reference CNI
# plugins, the containerd CRI end-to-end suite, manifest validation and the kind e2e script
# (which skips where Docker and kind are missing, as on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  bash tests/deps.sh
  # Root tests must not skip here: a missing tool or containerd is a failure.
  export EGRESS_GUARD_ROOT_REQUIRED=1 EGRESS_GUARD_CRI_REQUIRED=1
else
  echo "not root: root tests will print SKIP and only the unprivileged tests run" >&2
fi
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
# Every skipped test says so on stderr and in target/test-skips.log, listed again at the end.
rm -f target/test-skips.log
cargo test -- --test-threads 2

# Manifest schema validation (kubernetes-validate from PyPI, in a venv under target/).
if [ ! -x target/kv/bin/kubernetes-validate ]; then
  (python3 -m venv target/kv && target/kv/bin/pip install -q kubernetes-validate) \
    || echo "SKIP: could not install kubernetes-validate" >&2
fi
KUBERNETES_VALIDATE="$PWD/target/kv/bin/kubernetes-validate" bash deploy/check.sh
bash tests/kind/run.sh
if [ -s target/test-skips.log ]; then
  echo "skipped tests:" >&2
  sed 's/^/  /' target/test-skips.log >&2
fi
echo "all tests passed"
