#!/usr/bin/env bash
# What the capability access policy costs a worker under keep-alive mTLS load: the same
# server (`bench-driver serve`: the workers' TLS stack, request metrics and /health)
# with the check off, with the built-in policy, and with the default policy in Rego.
#
#   bash bench/access.sh            # about 2 minutes after the release build
#   bash bench/access.sh --quick    # 3 s runs
#
# Installs oha (cargo) and jq (apt) if missing, builds the release `crank` and
# `bench-driver`, starts a crank CA and three servers on 127.0.0.1, and alternates
# oha runs (64 connections) between the server without the check and each server with
# it, RUNS rounds with the order flipped every round. Prints medians, and each round's
# ratio to the run without the check beside it (the median of those ratios is the
# figure: the machine's speed drifts between rounds, less within one).
set -euo pipefail

RUNS=5
SECS=6
CONC=64
case "${1:-}" in
    --quick) SECS=3 ;;
    "") ;;
    *) echo "usage: bash bench/access.sh [--quick]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"   # also BIN: where cargo puts the release binaries

if ! command -v jq >/dev/null; then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq jq >/dev/null
fi
command -v oha >/dev/null || { log "installing oha (cargo install oha --locked)"; cargo install oha --locked; }
log "building release binaries"
(cd "$ROOT" && cargo build --release -p crank-cli -p crank-tests --bin crank --bin bench-driver)

make_work crank-access-bench.XXXXXX
RES=$WORK/results
CLIENT=$WORK/client

server_and_client_certs

declare -A PID URL
for mode in off builtin rego; do
    port=$(free_port)
    "$BIN/bench-driver" serve --client "$WORK/server" --listen "127.0.0.1:$port" --access "$mode" \
        >"$WORK/serve-$mode.log" 2>&1 &
    PID[$mode]=$!
    PIDS+=("$!")
    URL[$mode]=https://127.0.0.1:$port/health
    wait_port "$port"
done
for mode in off builtin rego; do
    curl -sf --cert "$CLIENT/client.crt" --key "$CLIENT/client.key" --cacert "$CLIENT/ca.crt" "${URL[$mode]}" >/dev/null \
        || { echo "the $mode server does not answer" >&2; cat "$WORK/serve-$mode.log" >&2; exit 1; }
done

# Keys: cb.* (off vs built-in) and cr.* (off vs Rego), so that each round's pair is known.
cb_off() { oha_run cb.off "${PID[off]}" "${URL[off]}"; }
cb_builtin() { oha_run cb.builtin "${PID[builtin]}" "${URL[builtin]}"; }
cr_off() { oha_run cr.off "${PID[off]}" "${URL[off]}"; }
cr_rego() { oha_run cr.rego "${PID[rego]}" "${URL[rego]}"; }
log "keep-alive mTLS GET /health, oha -c $CONC -z ${SECS}s: check off vs built-in policy"
alternate cb off builtin
log "keep-alive mTLS GET /health, oha -c $CONC -z ${SECS}s: check off vs Rego policy"
alternate cr off rego

# paired PREFIX MODE: the median over rounds of MODE's rate ÷ off's rate in that round.
paired() {
    paste <(awk -v k="$1.$2.rate" '$1 == k {print $2}' "$RES") <(awk -v k="$1.off.rate" '$1 == k {print $2}' "$RES") |
        awk '{print $1 / $2}' | sort -g | awk '{v[NR] = $1} END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
errors=$(awk '$1 ~ /\.err$/ {s += $2} END {print s + 0}' "$RES")
printf '\n| policy | requests/s (median) | check off, same rounds | ratio (median of rounds) | p50 ms | p99 ms | server CPU µs/request | check off: CPU µs/request |\n|---|---|---|---|---|---|---|---|\n'
for pair in "cb builtin" "cr rego"; do
    read -r k mode <<<"$pair"
    printf '| %s | %.0f | %.0f | %.3f | %.2f | %.2f | %.1f | %.1f |\n' "$mode" "$(med "$k.$mode.rate")" "$(med "$k.off.rate")" \
        "$(paired "$k" "$mode")" "$(med "$k.$mode.p50")" "$(med "$k.$mode.p99")" "$(med "$k.$mode.cpu")" "$(med "$k.off.cpu")"
done
echo
echo "non-200 answers or failures over all runs: $errors"
[[ $errors == 0 ]]
