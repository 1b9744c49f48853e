#!/usr/bin/env bash
# The operator console over a 1,000,000-row ledger, and what it costs issuance:
#
#   bash bench/console.sh            # about 3 minutes after the release build
#   bash bench/console.sh --quick    # 100,000 rows, 4 s runs
#
# Builds the release `crank` and `bench-driver`, makes a CA, fills its SQLite ledger
# with ROWS certificates (written straight into the database before the CA starts:
# issuing a million through the API would take most of an hour), then measures with an
# administrator certificate:
#   1. each console page's latency (oha, 4 connections): the overview (which counts the
#      ledger), the first page, a page a million rows deep (through the cursor), a
#      worker-id search, a serial search, the revoked filter, a certificate's page;
#   2. issuance with a fresh join token per request (bench-driver sign), alone and while
#      administrators page through the console (20 pages a second, a page a million
#      rows deep each time), RUNS rounds alternating; the figure is the median of each
#      round's ratio (issuance with the console ÷ without).
set -euo pipefail

ROWS=1000000
RUNS=3
SECS=8
CONC=8
case "${1:-}" in
    --quick) ROWS=100000 SECS=4 ;;
    "") ;;
    *) echo "usage: bash bench/console.sh [--quick]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
command -v oha >/dev/null || { log "installing oha (cargo install oha --locked)"; cargo install oha --locked; }
command -v jq >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
log "building release binaries"
(cd "$ROOT" && cargo build --release -p crank-cli -p crank-tests --bin crank --bin bench-driver)

make_work crank-console-bench.XXXXXX
RES=$WORK/results
CA=$WORK/ca
crank() { RUST_LOG=error "$BIN/crank" "$@"; }
crank ca init --dir "$CA" >/dev/null
CA_PORT=$(free_port)
start_ca() {
    RUST_LOG=error "$BIN/crank" ca serve --dir "$CA" --listen "127.0.0.1:$CA_PORT" >>"$WORK/ca.log" 2>&1 &
    CA_PID=$!
    PIDS+=("$CA_PID")
    wait_port "$CA_PORT"
}
# The first start makes and migrates the ledger; then it is filled while the CA is down.
start_ca
kill "$CA_PID"
wait "$CA_PID" 2>/dev/null || true
log "filling the ledger with $ROWS certificates"
python3 - "$CA/ca.db" "$ROWS" <<'PY'
import json, os, sqlite3, sys, time
db, rows = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
now = int(time.time())
def ts(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
def batch(start, n):
    for i in range(start, start + n):
        serial = ":".join(f"{b:02x}" for b in i.to_bytes(8, "big") + os.urandom(8))
        worker = f"worker-{i % 50000:05d}"
        issued = now - (rows - i) * 30          # one every 30 s, the newest now
        status = "revoked" if i % 997 == 0 else ("superseded" if i % 3 == 0 else "valid")
        yield (serial, worker, f"spiffe://crank.local/worker/{worker}", json.dumps([worker]), "[]",
               ts(issued - 60), ts(issued + 86400), os.urandom(32).hex(), "bench-replica",
               "renew" if i % 3 else "issue", f"req_{i:032x}", ts(issued), status, "")
step = 100000
for start in range(0, rows, step):
    c.executemany("INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after, "
                  "fingerprint, issued_by, kind, correlation_id, issued_at, status, pem) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch(start, min(step, rows - start)))
    c.commit()
c.execute("ANALYZE")
c.commit()
print(c.execute("SELECT COUNT(*) FROM certificates").fetchone()[0], "rows")
PY
start_ca
CA_URL=https://127.0.0.1:$CA_PORT
crank ca admin-cert --dir "$CA" --name bench --out "$WORK/admin" >/dev/null
# oha_run presents CLIENT's client.crt/client.key: the administrator's, renamed.
CLIENT=$WORK/client
mkdir -p "$CLIENT"
cp "$WORK/admin/admin.crt" "$CLIENT/client.crt"
cp "$WORK/admin/admin.key" "$CLIENT/client.key"
cp "$WORK/admin/ca.crt" "$CLIENT/ca.crt"
curl_admin() { curl -sf --cert "$CLIENT/client.crt" --key "$CLIENT/client.key" --cacert "$CLIENT/ca.crt" "$@"; }

# A cursor a million rows deep: the last row of the oldest page, from the ledger itself.
deep=$(python3 - "$CA/ca.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
r = c.execute("SELECT issued_at, serial FROM certificates ORDER BY issued_at DESC, serial DESC LIMIT 1 OFFSET "
              "(SELECT COUNT(*) - 60 FROM certificates)").fetchone()
print(f"{r[0]}|{r[1]}")
PY
)
some_serial=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT serial FROM certificates WHERE rowid = 123457').fetchone()[0])" "$CA/ca.db")
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
declare -A PAGE=(
    [overview]="/console"
    [first_page]="/console/certificates"
    [deep_page]="/console/certificates?after=$(enc "$deep")"
    [search_worker]="/console/certificates?q=worker-01234"
    [search_serial]="/console/certificates?q=$(enc "${some_serial:0:11}")"
    [revoked]="/console/certificates?status=revoked"
    [certificate]="/console/certificates/$(enc "$some_serial")"
)
for name in "${!PAGE[@]}"; do
    curl_admin -o /dev/null "$CA_URL${PAGE[$name]}" || { echo "the console does not answer ${PAGE[$name]}" >&2; exit 1; }
done
log "console pages over $ROWS rows (oha -c 4, ${SECS}s each)"
CONC_SAVED=$CONC
CONC=4
for name in overview first_page deep_page search_worker search_serial revoked certificate; do
    oha_run "page.$name" "$CA_PID" "$CA_URL${PAGE[$name]}"
done
CONC=$CONC_SAVED

# Issuance alone, and with an administrator paging through the console meanwhile.
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/csr.key" 2>/dev/null
openssl req -new -key "$WORK/csr.key" -subj "/CN=bench-client" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -out "$WORK/bench.csr" 2>/dev/null
issue() {
    "$BIN/bench-driver" sign --url "$CA_URL/v1/certificates" --csr "$WORK/bench.csr" --crank-ca "$CA" \
        --client "$CLIENT" --concurrency "$CONC" --seconds "$SECS" 2>>"$WORK/driver.err" \
        | tr ' ' '\n' | awk -F= '$1 == "rate" {print $2}'
}
log "issuance (bench-driver sign, $CONC tasks, ${SECS}s) alone and while the console is paged (20 pages/s), $RUNS rounds"
for ((r = 1; r <= RUNS; r++)); do
    alone=$(issue)
    oha --no-tui -c 2 -q 20 -z "$((SECS + 2))s" --cert "$CLIENT/client.crt" --key "$CLIENT/client.key" \
        --cacert "$CLIENT/ca.crt" "$CA_URL${PAGE[deep_page]}" >/dev/null 2>&1 &
    load=$!
    sleep 1
    busy=$(issue)
    wait "$load" || true
    put issue.alone "$alone"
    put issue.busy "$busy"
    put issue.ratio "$(awk -v a="$alone" -v b="$busy" 'BEGIN {print (a ? b / a : 0)}')"
    printf '    round %d/%d: alone %.0f/s  while paging %.0f/s\n' "$r" "$RUNS" "$alone" "$busy" >&2
done

echo
echo "| console page ($ROWS rows) | p50 ms | p99 ms | requests/s |"
echo "|---|---|---|---|"
for name in overview first_page deep_page search_worker search_serial revoked certificate; do
    printf '| %s | %.1f | %.1f | %.0f |\n' "$name" "$(med "page.$name.p50")" "$(med "page.$name.p99")" "$(med "page.$name.rate")"
done
echo
printf 'issuance alone %.0f/s, while the console is paged %.0f/s: ratio %.3f (median of %d rounds)\n' \
    "$(med issue.alone)" "$(med issue.busy)" "$(med issue.ratio)" "$RUNS"
