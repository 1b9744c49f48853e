#!/usr/bin/env bash
# Side-by-side benchmarks: crank against nginx (mTLS serving) and cfssl (signing), on
# this machine, in one run, reported as ratios.
#
#   bash bench/run.sh            # about 15 minutes on 2 cores, after the release build
#   bash bench/run.sh --quick    # 3 s runs, no policy benchmark; about 6 minutes
#
# Installs what is missing (apt: nginx, hyperfine, openssl, curl, jq, sqlite3; cfssl
# 1.6.5 by scripts/install-cfssl.sh; cargo: oha), builds the release binaries, then in
# a temporary directory: a crank CA, the hello-world worker, nginx with `ssl_verify_client on` and cfssl
# serving over mutual TLS, all on 127.0.0.1, all with ECDSA P-256 certificates from the
# same crank CA, and one client certificate that every run presents. Each comparison
# alternates ours and theirs (RUNS rounds, order flipped every round) and reports
# medians. Every load run is bounded in time; every process started here is stopped on
# exit. See bench/README.md for what each row measures.
set -euo pipefail

QUICK=0
case "${1:-}" in
    --quick) QUICK=1 ;;
    "") ;;
    *) echo "usage: bash bench/run.sh [--quick]" >&2; exit 2 ;;
esac
RUNS=3                 # rounds per comparison (ours and theirs once each per round)
SECS=10                # seconds per load run
CONC=64                # concurrent connections (oha -c, bench-driver --concurrency)
COLD_RUNS=20
if [[ $QUICK == 1 ]]; then SECS=3; COLD_RUNS=10; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"   # also BIN: where cargo puts the release binaries


# ---------------------------------------------------------------- tools and build
install_tools() {
    local missing=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v hyperfine >/dev/null || missing+=(hyperfine)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    command -v jq >/dev/null || missing+=(jq)
    command -v sqlite3 >/dev/null || missing+=(sqlite3)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        local sudo=""
        [[ $(id -u) == 0 ]] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    bash "$ROOT/scripts/install-cfssl.sh"
    if ! command -v oha >/dev/null; then
        log "installing oha (cargo install oha --locked)"
        cargo install oha --locked
    fi
}
export PATH=$PATH:/usr/sbin

install_tools
log "building release binaries"
(cd "$ROOT" && cargo build --release --workspace --bins)

# ---------------------------------------------------------------- processes
make_work crank-bench.XXXXXX


CLIENT=$WORK/client        # the client certificate every run presents
CURL=(curl -sf --cert "$CLIENT/client.crt" --key "$CLIENT/client.key" --cacert "$CLIENT/ca.crt")

wait_https() { # URL: until it answers 200 to the client certificate (20 s)
    local i
    for ((i = 0; i < 200; i++)); do
        "${CURL[@]}" -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

crank() { RUST_LOG=error "$BIN/crank" "$@"; }

serve_ca() { # DIR PORT: starts `crank ca serve` in the background; sets LAST_PID
    RUST_LOG=error "$BIN/crank" ca serve --dir "$1" --listen "127.0.0.1:$2" >"$1.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$2"
}

nginx_workers() { pgrep -P "$NGINX_PID" | tr '\n' ' '; }

# ---------------------------------------------------------------- set-up
log "setting up in $WORK"
CA=$WORK/ca
CA_PORT=$(free_port)
crank ca init --dir "$CA" >/dev/null
serve_ca "$CA" "$CA_PORT"
CA_PID=$LAST_PID
CA_URL=https://127.0.0.1:$CA_PORT
cert_for() { # WORKER DIR: a certificate from the crank CA (key made here, ECDSA P-256)
    crank cert init --worker-id "$1" --token "$(crank token create --dir "$CA" --worker-id "$1")" \
        --ca-url "$CA_URL" --cert-dir "$2" >/dev/null
}
cert_for bench-client "$CLIENT"
cert_for bench-nginx "$WORK/nginx-cert"
cert_for bench-cfssl "$WORK/cfssl-cert"

# hello-world, bootstrapped by the CA like any worker. All load comes from one address
# and the memory runs hold 1,000 idle connections for 30 s: lift the connection limits
# and give idle connections nginx's timeouts (60 s header, 75 s keep-alive).
HW_LIMITS=(CRANK_MAX_CONNECTIONS=2000 CRANK_MAX_CONNECTIONS_PER_IP=2000
    CRANK_HEADER_READ_TIMEOUT=60s CRANK_IDLE_TIMEOUT=75s)
HW_PORT=$(free_port)
CRANK_JOIN_TOKEN=$(crank token create --dir "$CA" --worker-id hello-world) \
    CA_SERVICE_URL=$CA_URL CERT_DIR=$WORK/hello-world HELLO_WORLD_HTTPS_PORT=$HW_PORT \
    CRANK_LISTEN_HOST=127.0.0.1 RUST_LOG=error env "${HW_LIMITS[@]}" "$BIN/hello-world" >"$WORK/hello-world.log" 2>&1 &
HW_PID=$!
PIDS+=("$HW_PID")
HW_URL=https://127.0.0.1:$HW_PORT/health
# A second hello-world with TLS session resumption off, for oha's full-handshake runs
# (oha resumes whenever the server offers it).
HW2_PORT=$(free_port)
CRANK_JOIN_TOKEN=$(crank token create --dir "$CA" --worker-id hello-world-full) \
    CA_SERVICE_URL=$CA_URL CERT_DIR=$WORK/hello-world-full HELLO_WORLD_HTTPS_PORT=$HW2_PORT \
    CRANK_LISTEN_HOST=127.0.0.1 CRANK_TLS_RESUMPTION=off RUST_LOG=error env "${HW_LIMITS[@]}" "$BIN/hello-world" >"$WORK/hello-world-full.log" 2>&1 &
HW2_PID=$!
PIDS+=("$HW2_PID")
HW2_URL=https://127.0.0.1:$HW2_PORT/health

# nginx: one port without session resumption (full handshakes), one with its defaults
# (TLS session tickets on), both requiring a client certificate from the crank CA.
NGX=$WORK/nginx
mkdir -p "$NGX"
NGX_PORT=$(free_port)
NGX_RESUME_PORT=$(free_port)
cat >"$NGX/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $NGX/nginx.pid;
error_log $NGX/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NGX/body;
    proxy_temp_path $NGX/proxy;
    fastcgi_temp_path $NGX/fastcgi;
    uwsgi_temp_path $NGX/uwsgi;
    scgi_temp_path $NGX/scgi;
    ssl_certificate $WORK/nginx-cert/client.crt;
    ssl_certificate_key $WORK/nginx-cert/client.key;
    ssl_client_certificate $WORK/nginx-cert/ca.crt;
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / { default_type application/json; return 200 '{"status":"healthy"}'; }
    }
    server {
        listen 127.0.0.1:$NGX_RESUME_PORT ssl;
        location / { default_type application/json; return 200 '{"status":"healthy"}'; }
    }
}
EOF
nginx -c "$NGX/nginx.conf" -e "$NGX/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
NGX_URL=https://127.0.0.1:$NGX_PORT/health
NGX_RESUME_URL=https://127.0.0.1:$NGX_RESUME_PORT/health

# cfssl: its own ECDSA P-256 CA for signing; serves HTTPS with a crank-issued server
# certificate and requires a client certificate from the crank CA, like ours.
CF=$WORK/cfssl
mkdir -p "$CF"
openssl ecparam -name prime256v1 -genkey -noout -out "$CF/ca.key" 2>/dev/null
openssl req -x509 -new -key "$CF/ca.key" -subj "/CN=cfssl bench CA" -days 2 -out "$CF/ca.crt" 2>/dev/null
echo '{"signing":{"default":{"expiry":"24h","usages":["digital signature","server auth","client auth"]}}}' >"$CF/config.json"
CF_PORT=$(free_port)
cfssl serve -address 127.0.0.1 -port "$CF_PORT" -ca "$CF/ca.crt" -ca-key "$CF/ca.key" \
    -config "$CF/config.json" -tls-cert "$WORK/cfssl-cert/client.crt" -tls-key "$WORK/cfssl-cert/client.key" \
    -mutual-tls-ca "$CLIENT/ca.crt" -loglevel 4 >"$CF/log" 2>&1 &
PIDS+=("$!")
CF_URL=https://127.0.0.1:$CF_PORT/api/v1/cfssl/sign

# The one CSR both CAs sign: ECDSA P-256, SANs that the default policy allows.
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/csr.key" 2>/dev/null
openssl req -new -key "$WORK/csr.key" -subj "/CN=bench-client" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -out "$WORK/bench.csr" 2>/dev/null
jq -n --rawfile c "$WORK/bench.csr" '{csr: $c}' >"$WORK/crank-body.json"
jq -n --rawfile c "$WORK/bench.csr" '{certificate_request: $c}' >"$WORK/cfssl-body.json"

wait_https "$HW_URL"
wait_https "$HW2_URL"
wait_https "$NGX_URL"
wait_https "$NGX_RESUME_URL"
wait_port "$CF_PORT"
"${CURL[@]}" -o /dev/null -H 'content-type: application/json' -d @"$WORK/cfssl-body.json" "$CF_URL"

# ---------------------------------------------------------------- measurement helpers
RES=$WORK/results       # lines: KEY VALUE (lib.sh: put, med, oha_run, alternate)
# driver_run KEY "PIDS" MODE [bench-driver options]: same records from bench-driver.
driver_run() {
    local key=$1 pids=$2 mode=$3
    shift 3
    local line c0 c1
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    line=$("$BIN/bench-driver" "$mode" --client "$CLIENT" --concurrency "$CONC" --seconds "$SECS" "$@" 2>>"$WORK/driver.err")
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    local ok rate p50 p99 err
    read -r ok rate p50 p99 err < <(tr ' ' '\n' <<<"$line" | awk -F= '{v[$1] = $2} END {print v["ok"], v["rate"], v["p50_ms"], v["p99_ms"], v["errors"]}')
    put "$key.rate" "$rate"
    put "$key.p50" "$p50"
    put "$key.p99" "$p99"
    put "$key.err" "$err"
    put "$key.cpu" "$(awk -v c=$((c1 - c0)) -v t="$TCK" -v n="$ok" 'BEGIN {print (n ? c / t * 1e6 / n : 0)}')"
}

# stime_run KEY URL_PORT: openssl s_time -new (one connection at a time, no resumption).
stime_run() {
    local out
    out=$(openssl s_time -connect "127.0.0.1:$2" -new -time "$SECS" -www /health \
        -cert "$CLIENT/client.crt" -key "$CLIENT/client.key" -CAfile "$CLIENT/ca.crt" 2>&1)
    put "$1.rate" "$(awk '/connections in .* real seconds/ {print $1 / $4; exit}' <<<"$out")"
}

# ---------------------------------------------------------------- memory
log "idle memory"
sleep 1
NGX_WORKERS=$(nginx_workers)
# shellcheck disable=SC2086
put mem.idle.ours "$(rss_kib "$HW_PID")"
# shellcheck disable=SC2086
put mem.idle.nginx_workers "$(rss_kib $NGX_WORKERS)"
put mem.idle.nginx_master "$(rss_kib "$NGINX_PID")"
put mem.nginx_worker_count "$(wc -w <<<"$NGX_WORKERS")"

hold_rss() { # KEY URL N "PIDS": RSS while bench-driver holds N open mTLS connections
    local fifo=$WORK/hold.out
    "$BIN/bench-driver" hold --url "$2" --client "$CLIENT" --connections "$3" --seconds 30 >"$fifo" 2>&1 &
    local pid=$! i
    PIDS+=("$pid")
    for ((i = 0; i < 300; i++)); do grep -q ready "$fifo" 2>/dev/null && break; sleep 0.1; done
    grep -q ready "$fifo" || { cat "$fifo" >&2; return 1; }
    sleep 1
    # shellcheck disable=SC2086
    put "$1" "$(rss_kib $4)"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
log "memory with 10 and 1,000 open mTLS connections"
for n in 10 1000; do
    hold_rss "mem.conn$n.ours" "$HW_URL" "$n" "$HW_PID"
    hold_rss "mem.conn$n.nginx_workers" "$NGX_URL" "$n" "$NGX_WORKERS"
done

# ---------------------------------------------------------------- 1. keep-alive
log "1. keep-alive mTLS requests: hello-world /health vs nginx fixed 200 (oha -c $CONC -z ${SECS}s)"
ka_ours() { oha_run ka.ours "$HW_PID" "$HW_URL"; }
ka_nginx() { oha_run ka.nginx "$NGINX_PID $NGX_WORKERS" "$NGX_URL"; }
alternate ka ours nginx

# ---------------------------------------------------------------- 2. handshakes
log "2a. full mTLS handshakes, client resumption off (bench-driver handshakes)"
fh_ours() { driver_run fh.ours "$HW_PID" handshakes --url "$HW_URL"; }
fh_nginx() { driver_run fh.nginx "$NGINX_PID $NGX_WORKERS" handshakes --url "$NGX_URL"; }
alternate fh ours nginx

log "2b. openssl s_time -new (one connection at a time)"
st_ours() { stime_run st.ours "$HW_PORT"; }
st_nginx() { stime_run st.nginx "$NGX_PORT"; }
alternate st ours nginx

log "2c. oha --disable-keepalive, resumption off on both servers (every connection a full handshake)"
dk_ours() { oha_run dk.ours "$HW2_PID" "$HW2_URL" --disable-keepalive; }
dk_nginx() { oha_run dk.nginx "$NGINX_PID $NGX_WORKERS" "$NGX_URL" --disable-keepalive; }
alternate dk ours nginx

log "2d. oha --disable-keepalive, resumption on in both servers (their defaults)"
dr_ours() { oha_run dr.ours "$HW_PID" "$HW_URL" --disable-keepalive; }
dr_nginx() { oha_run dr.nginx "$NGINX_PID $NGX_WORKERS" "$NGX_RESUME_URL" --disable-keepalive; }
alternate dr ours nginx

# ---------------------------------------------------------------- 3. signing
# Copies of the CA (same keys, same ledger so far) for the scale runs, taken now.
SCALE_SIZES=(0 100000 1000000)
for n in "${SCALE_SIZES[@]}"; do
    d=$WORK/ca-$n
    mkdir -p "$d"
    for f in "$CA"/*; do [[ $f == *ca.db* ]] || cp -p "$f" "$d/"; done
    sqlite3 "$CA/ca.db" ".backup '$d/ca.db'"
done

log "3a. renewal as workers do it (bench-driver renew: new key, new mTLS connection each) vs cfssl sign on a new connection each"
sg_ours() { driver_run sg.ours "$CA_PID" renew --url "$CA_URL" --crank-ca "$CA"; }
sg_cfssl() { driver_run sg.cfssl "$(pgrep -f "cfssl serve -address 127.0.0.1 -port $CF_PORT")" sign --url "$CF_URL" --csr "$WORK/bench.csr" --field certificate_request --new-connection true; }
alternate sg ours cfssl

log "3b. signing with a fresh join token per request (bench-driver sign) vs cfssl sign"
tk_ours() { driver_run tk.ours "$CA_PID" sign --url "$CA_URL/v1/certificates" --csr "$WORK/bench.csr" --crank-ca "$CA"; }
tk_cfssl() { driver_run tk.cfssl "$(pgrep -f "cfssl serve -address 127.0.0.1 -port $CF_PORT")" sign --url "$CF_URL" --csr "$WORK/bench.csr" --field certificate_request; }
alternate tk ours cfssl

# ---------------------------------------------------------------- scale: ledger size
log "scale: renewal throughput with 0, 100,000 and 1,000,000 extra ledger rows"
TD=$(cat "$CA/trust-domain")
preload() { # DB N: N ledger rows, columns of schema migration 1 only (defaults fill the rest)
    sqlite3 "$1" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2)
INSERT INTO certificates (serial, worker_id, spiffe_id, sans, capabilities, not_before, not_after,
                          fingerprint, issued_by, kind, correlation_id, issued_at)
SELECT printf('pl:%012x', i), 'preload-' || (i % 5000), 'spiffe://$TD/worker/preload-' || (i % 5000),
       '["spiffe://$TD/worker/preload-' || (i % 5000) || '"]', '[]',
       strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-1 hour'), strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+23 hours'),
       lower(hex(randomblob(32))), 'bench-preload', 'issue', 'preload-' || i, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
FROM n;
COMMIT;
SQL
}
declare -A SCALE_PID SCALE_URL
for n in "${SCALE_SIZES[@]}"; do
    d=$WORK/ca-$n
    ((n > 0)) && preload "$d/ca.db" "$n"
    put "scale.$n.rows" "$(sqlite3 "$d/ca.db" 'SELECT count(*) FROM certificates')"
    p=$(free_port)
    serve_ca "$d" "$p"
    SCALE_PID[$n]=$LAST_PID
    SCALE_URL[$n]=https://127.0.0.1:$p
done
for ((r = 1; r <= RUNS; r++)); do
    for n in "${SCALE_SIZES[@]}"; do
        driver_run "scale.$n" "${SCALE_PID[$n]}" renew --url "${SCALE_URL[$n]}" --crank-ca "$WORK/ca-$n"
    done
    printf '    round %d/%d done\n' "$r" "$RUNS" >&2
done
for n in "${SCALE_SIZES[@]}"; do kill "${SCALE_PID[$n]}" 2>/dev/null || true; done

# ---------------------------------------------------------------- 4. cold start
log "4. worker cold start (target/release/cold-start --runs $COLD_RUNS)"
"$BIN/cold-start" --runs "$COLD_RUNS" | tee "$WORK/cold.txt" >&2
cold() { awk -v w="$1" -v f="$2" 'index($0, w) == 1 { for (i = 1; i <= NF; i++) if (index($i, f "=") == 1) { sub(f "=", "", $i); print $i } }' "$WORK/cold.txt"; }
put cold.first.median "$(cold "first start" median)"
put cold.first.p90 "$(cold "first start" p90)"
put cold.restart.median "$(cold "restart" median)"

# ---------------------------------------------------------------- 5. policy
if [[ $QUICK == 0 ]]; then
    log "5. policy decisions per engine (criterion, shortened)"
    (cd "$ROOT" && cargo build --release --target wasm32-unknown-unknown \
        --manifest-path policies/wasm/default-policy/Cargo.toml >&2)
    (cd "$ROOT" && cargo bench -p crank-policy --bench decisions -- \
        --warm-up-time 1 --measurement-time 3 --noplot 2>/dev/null) | tee "$WORK/decisions.txt" >&2
fi

# ---------------------------------------------------------------- 6. machine limit
log "6. openssl speed -seconds 3 ecdsap256"
openssl speed -seconds 3 ecdsap256 2>/dev/null | tee "$WORK/speed.txt" >&2
put speed.sign "$(awk '/256 bits ecdsa/ {print $(NF - 1)}' "$WORK/speed.txt")"
put speed.verify "$(awk '/256 bits ecdsa/ {print $NF}' "$WORK/speed.txt")"

# ---------------------------------------------------------------- report
source "$ROOT/bench/report.sh"
