#!/usr/bin/env bash
# Builds the container images on this machine: static binaries for
# x86_64-unknown-linux-musl (the `image` profile: no debug info, stripped), then one
# image per binary from deploy/images/Containerfile.prebuilt with podman:
# crank-security/crank, crank-security/hello-world and crank-security/caller (each also
# holds crank-probe, for its HEALTHCHECK). Installs musl-tools, podman and runc when
# missing (Debian). docs/deploy.md, "Images".
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/podman-env.sh
source scripts/podman-env.sh

target=x86_64-unknown-linux-musl
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
cargo build --locked --profile image --target "$target" \
    -p crank-cli -p crank-examples --bin crank --bin crank-probe --bin hello-world --bin caller
out="${CARGO_TARGET_DIR:-target}/$target/image"

context=$(mktemp -d)
trap 'rm -rf "$context" "$podman_conf_dir"' EXIT
mkdir -p "$context/bin" "$context/var/lib/crank"
for b in crank crank-probe hello-world caller; do
    # An empty image has no loader and no libc: each binary must be static.
    if ! file "$out/$b" | grep -q "static"; then
        echo "$out/$b is not statically linked: $(file "$out/$b")" >&2
        exit 1
    fi
    install -m 0755 "$out/$b" "$context/bin/$b"
done
for image in crank hello-world caller; do
    podman_ build --format docker --isolation chroot --quiet -f deploy/images/Containerfile.prebuilt \
        --target "$image" -t "crank-security/$image:latest" "$context" >/dev/null
    size=$(podman_ image inspect --format '{{.Size}}' "crank-security/$image:latest")
    echo "built crank-security/$image:latest ($((size / 1024 / 1024)) MiB)"
done
