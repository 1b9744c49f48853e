#!/usr/bin/env bash
# The whole test suite: formatting, lints, build, unit, integration and doc tests.
# Installs the system tools the tests call (openssl, curl) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in openssl curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real `crank` and `hello-world` binaries.
cargo build --workspace --bins --locked
cargo test --workspace --locked
