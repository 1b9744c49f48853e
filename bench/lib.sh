#!/usr/bin/env bash
# Helpers shared by the bench/ scripts (sourced, not run, after ROOT is
# set to the workspace root). They use the caller's WORK (scratch directory), RES
# (results file), CLIENT (the client cert directory every run presents), CONC, SECS and
# RUNS.

# Where cargo puts the binaries: CARGO_TARGET_DIR (relative to the workspace root) or target/.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
BIN=$TARGET_DIR/release
export PATH=$HOME/.cargo/bin:$PATH:/usr/sbin

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            echo "$p"
            return
        fi
    done
}

wait_port() {
    local i
    for ((i = 0; i < 200; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# Sum of utime+stime (clock ticks) and of VmRSS (KiB) over PIDs.
cpu_ticks() { local p t=0; for p in "$@"; do t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done; echo "$t"; }
rss_kib() { local p t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
TCK=$(getconf CLK_TCK)

put() { echo "$1 $2" >>"$RES"; }

# Median of the values recorded under KEY.
med() {
    awk -v k="$1" '$1 == k {print $2}' "$RES" | sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# oha_run KEY "PIDS" URL [oha options]: one bounded oha run; records KEY.rate (200s per
# second), KEY.p50 / KEY.p99 (ms), KEY.err (non-200 answers and failures, not counting
# requests cut by the deadline) and KEY.cpu (server CPU µs per successful request).
oha_run() {
    local key=$1 pids=$2 url=$3
    shift 3
    local out=$WORK/oha.json c0 c1
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    oha --no-tui --output-format json -c "$CONC" -z "${SECS}s" \
        --cert "$CLIENT/client.crt" --key "$CLIENT/client.key" --cacert "$CLIENT/ca.crt" "$@" "$url" >"$out"
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    local ok
    ok=$(jq '.statusCodeDistribution["200"] // 0' "$out")
    put "$key.rate" "$(jq -r "$ok / .summary.total" "$out")"
    put "$key.p50" "$(jq -r '.latencyPercentiles.p50 * 1000' "$out")"
    put "$key.p99" "$(jq -r '.latencyPercentiles.p99 * 1000' "$out")"
    put "$key.err" "$(jq -r '([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0)
        + ([.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0)' "$out")"
    put "$key.cpu" "$(awk -v c=$((c1 - c0)) -v t="$TCK" -v n="$ok" 'BEGIN {print (n ? c / t * 1e6 / n : 0)}')"
}

# alternate PREFIX A B: RUNS rounds of the functions PREFIX_A and PREFIX_B (each records
# PREFIX.A.* / PREFIX.B.*), the order flipped every round.
alternate() {
    local r p=$1 a=$2 b=$3
    for ((r = 1; r <= RUNS; r++)); do
        if ((r % 2)); then "${p}_$a"; "${p}_$b"; else "${p}_$b"; "${p}_$a"; fi
        printf '    round %d/%d: %s %s/s  %s %s/s\n' "$r" "$RUNS" "$a" "$(last "$p.$a.rate")" "$b" "$(last "$p.$b.rate")" >&2
    done
}
last() { awk -v k="$1" '$1 == k {v = $2} END {printf "%.0f", v}' "$RES"; }

# server_and_client_certs: a crank CA serving in WORK, and certificates from it for a
# client (in CLIENT) and a server (in WORK/server), for the access benchmarks.
server_and_client_certs() {
    local ca=$WORK/ca port
    port=$(free_port)
    RUST_LOG=error "$BIN/crank" ca init --dir "$ca" >/dev/null
    RUST_LOG=error "$BIN/crank" ca serve --dir "$ca" --listen "127.0.0.1:$port" >"$ca.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$port"
    local worker dir
    for worker in bench-client:"$CLIENT" bench-server:"$WORK/server"; do
        dir=${worker#*:}
        worker=${worker%%:*}
        RUST_LOG=error "$BIN/crank" cert init --worker-id "$worker" --ca-url "https://127.0.0.1:$port" \
            --token "$(RUST_LOG=error "$BIN/crank" token create --dir "$ca" --worker-id "$worker")" \
            --cert-dir "$dir" >/dev/null
    done
}

# make_work TEMPLATE: a scratch directory in WORK, and PIDS (processes to stop): both
# cleaned up on exit, also on Ctrl-C.
make_work() {
    WORK=$(mktemp -d -t "$1")
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
