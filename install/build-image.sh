#!/usr/bin/env bash
# Builds the DaemonSet's image on a machine without Docker: the release binary linked
# statically (glibc, `-C target-feature=+crt-static`), packed by testkit's OCI packer as one
# layer holding /egress-guard, with install/Dockerfile's ENTRYPOINT, CMD and USER. Prints the
# image-layout tarball; import it with
#   ctr -n k8s.io images import --platform linux/amd64 target/image/egress-guard-oci.tar
# (the image is docker.io/library/egress-guard:dev, what deploy/daemonset.yaml's
# egress-guard:dev resolves to). install/README.md says how it differs from the Dockerfile's.
set -euo pipefail
cd "$(dirname "$0")/.."
host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet --bin egress-guard --target "$host" \
    --target-dir "$CARGO_TARGET_DIR/static"
bin="$CARGO_TARGET_DIR/static/$host/release/egress-guard"
if ldd "$bin" 2>/dev/null | grep -q '=>'; then
    echo "build-image: $bin is not statically linked" >&2
    exit 1
fi
cargo run --quiet -p egress-guard-testkit --bin build-image -- "$bin" "$CARGO_TARGET_DIR/image"
