#!/usr/bin/env bash
# What the capability access check costs a worker in instructions, which the machine's
# noise does not move: the same three servers as bench/access.sh (`bench-driver serve`:
# the workers' TLS and HTTP stack with the check off, the built-in policy, or the default
# policy in Rego), each under `valgrind --tool=callgrind`, answering keep-alive mTLS
# `GET /health` on 4 connections. For each server: counters zeroed, 1,000 requests,
# dump; zeroed, 3,000 requests, dump; the difference over 2,000 is the cost of one
# request (the handshakes of the two runs cancel out). ROUNDS rounds, alternating.
#
#   bash bench/access-instructions.sh        # about 10 minutes after the release build
#
# Needs valgrind (apt) and oha (cargo install oha --locked); installs them if missing.
set -euo pipefail

ROUNDS=${ROUNDS:-2}
CONC=4
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

if ! command -v valgrind >/dev/null || ! command -v jq >/dev/null; then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind jq >/dev/null
fi
command -v oha >/dev/null || { log "installing oha (cargo install oha --locked)"; cargo install oha --locked; }
log "building release binaries"
(cd "$ROOT" && cargo build --release -p crank-cli -p crank-tests --bin crank --bin bench-driver)

make_work crank-access-instructions.XXXXXX
CLIENT=$WORK/client
server_and_client_certs

# requests N URL: N keep-alive requests on CONC connections; fails unless all are 200.
requests() {
    local out=$WORK/oha.json
    oha --no-tui --output-format json -n "$1" -c "$CONC" \
        --cert "$CLIENT/client.crt" --key "$CLIENT/client.key" --cacert "$CLIENT/ca.crt" "$2" >"$out"
    [[ $(jq '.statusCodeDistribution["200"] // 0' "$out") == "$1" ]] || { echo "not all $1 answered 200" >&2; exit 1; }
}

# dumped PID DIR K: the instructions the server PID executed since its counters were
# zeroed, from its K-th dump (callgrind writes DIR/out.PID.K).
dumped() {
    local file=$2/out.$1.$3
    callgrind_control -d "$1" >/dev/null
    for ((i = 0; i < 100; i++)); do
        [[ -s $file ]] && grep -q '^totals:\|^summary:' "$file" && break
        sleep 0.1
    done
    awk '/^(summary|totals):/ {print $2; exit}' "$file"
}

# measure MODE: instructions per request of a fresh server with the check MODE.
measure() {
    local mode=$1 port dir pid url a b
    port=$(free_port)
    dir=$WORK/cg-$mode-$RANDOM
    mkdir -p "$dir"
    valgrind --tool=callgrind --callgrind-out-file="$dir/out.%p" \
        "$BIN/bench-driver" serve --client "$WORK/server" --listen "127.0.0.1:$port" --access "$mode" \
        >"$dir.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 600; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    url=https://127.0.0.1:$port/health
    requests 200 "$url" # warm-up
    callgrind_control -z "$pid" >/dev/null
    requests 1000 "$url"
    a=$(dumped "$pid" "$dir" 1)
    callgrind_control -z "$pid" >/dev/null
    requests 3000 "$url"
    b=$(dumped "$pid" "$dir" 2)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo $(((b - a) / 2000))
}

declare -A SUM
printf '| round | check off | built-in | Rego | built-in ÷ off (inverse) | Rego ÷ off (inverse) |\n|---|---|---|---|---|---|\n'
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="off builtin rego"; else order="rego builtin off"; fi
    declare -A I=()
    for mode in $order; do I[$mode]=$(measure "$mode"); done
    printf '| %d | %d | %d | %d | %.3f | %.3f |\n' "$r" "${I[off]}" "${I[builtin]}" "${I[rego]}" \
        "$(awk -v o="${I[off]}" -v c="${I[builtin]}" 'BEGIN {print o / c}')" \
        "$(awk -v o="${I[off]}" -v c="${I[rego]}" 'BEGIN {print o / c}')"
    for mode in off builtin rego; do SUM[$mode]=$((${SUM[$mode]:-0} + I[$mode])); done
done
printf '| all | %d | %d | %d | %.3f | %.3f |\n' "$((SUM[off] / ROUNDS))" "$((SUM[builtin] / ROUNDS))" \
    "$((SUM[rego] / ROUNDS))" "$(awk -v o="${SUM[off]}" -v c="${SUM[builtin]}" 'BEGIN {print o / c}')" \
    "$(awk -v o="${SUM[off]}" -v c="${SUM[rego]}" 'BEGIN {print o / c}')"
