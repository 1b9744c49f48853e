#!/usr/bin/env bash
# What a service author pays to depend on the worker runtime: a minimal worker crate
# (the three-line hello-world) outside the workspace, built cold in release mode.
# Prints its dependency names that belong to the CA side (none expected), the cold
# build time, and the size of the stripped binary.
#
#   bash bench/worker-footprint.sh            # uses a fresh temporary target directory
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/worker/src"
cat > "$work/worker/Cargo.toml" <<TOML
[package]
name = "minimal-worker"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
crank-runtime = { path = "$repo/crank-runtime" }
anyhow = "1"
axum = { version = "0.8", default-features = false, features = ["http1", "tokio"] }

[workspace]
TOML
cat > "$work/worker/src/main.rs" <<'RS'
use axum::{Router, routing::get};
use crank_runtime::WorkerApplication;

fn main() -> anyhow::Result<()> {
    WorkerApplication::new("hello-world")
        .port_from_env("HELLO_WORLD_HTTPS_PORT", 8500)
        .routes(Router::new().route("/", get(|| async { "hello" })))
        .run()?;
    Ok(())
}
RS
cp "$repo/Cargo.lock" "$work/worker/Cargo.lock"
cd "$work/worker"
echo "CA-side crates in the dependency tree (rusqlite, libsqlite3-sys, tokio-postgres, deadpool-postgres, clap):"
cargo tree --prefix none -e normal 2>/dev/null | awk '{print $1}' | sort -u \
    | grep -E '^(rusqlite|libsqlite3-sys|tokio-postgres|deadpool-postgres|clap)$' || echo "  none"
echo "crates in the tree: $(cargo tree --prefix none -e normal 2>/dev/null | awk '{print $1}' | sort -u | wc -l)"
start=$(date +%s.%N)
CARGO_TARGET_DIR="$work/target" cargo build --release --quiet
end=$(date +%s.%N)
printf 'cold release build: %.0f s\n' "$(echo "$end - $start" | bc)"
strip -o "$work/stripped" "$work/target/release/minimal-worker"
echo "stripped binary: $(stat -c %s "$work/stripped") bytes"
