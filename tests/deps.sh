#!/usr/bin/env bash
# Installs the Debian packages the demo and the test suite need (idempotent; root).
set -euo pipefail
PKGS=(nftables iproute2 iptables containernetworking-plugins containerd runc
      protobuf-compiler gcc libc6-dev util-linux procps tar coreutils ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (rustup, stable >= 1.85) first" >&2
  exit 1
fi
