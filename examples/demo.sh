#!/usr/bin/env bash
# The demo: a node built from network namespaces with the real reference CNI plugins, an
# orchestrator, an internet host, a guarded model backend and an unguarded neighbour pod.
# Prints what was allowed and what was blocked. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the demo needs root (network namespaces, nf_tables)" >&2; exit 1; }
bash tests/deps.sh
cargo build --quiet --release --bin egress-guard --example demo
EGRESS_GUARD_BIN="$PWD/target/release/egress-guard" target/release/examples/demo
