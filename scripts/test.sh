#!/usr/bin/env bash
# The whole test suite: formatting, lints, build, unit, integration and doc tests.
# Installs the system tools the tests call (openssl, curl, the PostgreSQL server, cfssl
# 1.6 or newer) when they are missing. Tests that need PostgreSQL start their own server
# on 127.0.0.1 on a free port (initdb + pg_ctl, as the postgres user when run as root)
# and stop it; the cfssl signer's tests start `cfssl serve` on 127.0.0.1 the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
# Waits up to two minutes for another apt or dpkg run to let go of the lock.
apt_get() {
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 "$@"
}

missing=()
for tool in openssl curl strace faketime; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# ip and tc for the network drill (a namespace, veth, qdiscs).
command -v tc >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# Python with venv, for py-spiffe (the agent's tests) and the repository's scripts.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ -z "${CRANK_PG_BINDIR:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt_get update -qq
    apt_get install -y -qq "${missing[@]}"
fi

# The cfssl signer's tests need cfssl 1.6 or newer.
bash scripts/install-cfssl.sh

# The WebAssembly policy written in Rust is compiled by the test command itself. It lands
# in $CARGO_TARGET_DIR when that is set, else in the policy crate's own target/; the
# tests look in the same place (crank-policy/tests/support/wasm_module.rs).
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
cargo build --release --locked --target wasm32-unknown-unknown --manifest-path policies/wasm/default-policy/Cargo.toml

cargo fmt --all --check
# No import cycles between the files of a crate (docs/architecture.md, "The layout").
python3 scripts/import-cycles.py
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every public item documented, every doc link resolved.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked
# The end-to-end tests run the real `crank` and `hello-world` binaries.
cargo build --workspace --bins --locked
# py-spiffe from PyPI: the agent's end-to-end tests run it as a workload.
bash scripts/install-py-spiffe.sh
cargo test --workspace --locked
# The deployment manifests (compose and Kubernetes) against their schemas and the
# project's rules; no cluster is needed.
bash scripts/validate-deploy.sh
# The operator console in headless Chromium, with client certificates.
bash scripts/test-browser.sh
# The container images, built with podman and run for real (a CA and a worker container
# over mTLS, as uid 1000 on a read-only root). Podman here needs root: without it the
# step says so and is skipped, except under CI, where it must run.
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ]; then
    bash scripts/test-images.sh
else
    echo "skipping the container image test: it needs root (podman with vfs storage); CI runs it"
fi
# Every fuzz target for a bounded smoke run (30 s each; CRANK_FUZZ_SECONDS to change it,
# 0 to skip locally). docs/security.md, "Fuzzing".
fuzz_seconds="${CRANK_FUZZ_SECONDS:-30}"
[ "${CI:-}" = true ] && [ "$fuzz_seconds" = 0 ] && fuzz_seconds=30
if [ "$fuzz_seconds" != 0 ]; then
    bash scripts/fuzz.sh "$fuzz_seconds"
fi
