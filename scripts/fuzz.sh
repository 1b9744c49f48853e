#!/usr/bin/env bash
# Fuzzes every parser of untrusted input with cargo fuzz (libFuzzer, nightly toolchain).
#
#   bash scripts/fuzz.sh                 # every target for 30 s (the smoke run the test command makes)
#   bash scripts/fuzz.sh 600 csr crl     # the named targets for 10 minutes each
#   FUZZ_KEEP=1 bash scripts/fuzz.sh 600 # keep what the run finds in fuzz/corpus/<target>
#
# Targets (fuzz/fuzz_targets/): csr, join_token, crl, ca_api, rego_policy, wasm_policy,
# workload_api.
# Each run reads fuzz/corpus/<target> (kept in the repository) and fuzz/seeds/<target>
# (valid inputs made again here by the project's own code: `fuzz-seeds`). A crash
# stops the script with libFuzzer's report and the input in fuzz/artifacts/<target>/;
# it becomes a regression test in the crate that owns the parser (docs/security.md).
# Installs the nightly toolchain and cargo-fuzz when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
all=(csr join_token crl ca_api rego_policy wasm_policy workload_api)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all[@]}")

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
# The Rust WebAssembly policy the wasm_policy target evaluates (as the test command builds it).
cargo build --release --locked --target wasm32-unknown-unknown --manifest-path policies/wasm/default-policy/Cargo.toml
# Seeds (and, the first time, the fixture CA) from the project's own code.
cargo run --quiet --locked -p crank-tests --bin fuzz-seeds -- fuzz

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    # New inputs go to the first directory: a scratch one unless FUZZ_KEEP is set.
    out="$scratch/$target"
    [ -n "${FUZZ_KEEP:-}" ] && out="fuzz/corpus/$target"
    mkdir -p "$out"
    echo "== $target: ${seconds} s"
    log="$scratch/$target.log"
    if ! cargo +nightly fuzz run "$target" "$(realpath "$out")" "$PWD/fuzz/corpus/$target" "$PWD/fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*')"
    summary+=("$(printf '%-12s %10s executions  coverage %6s edges' "$target" "${runs:-?}" "${cov:-?}")")
done
echo "== fuzzing done, no crash:"
printf '%s\n' "${summary[@]}"
