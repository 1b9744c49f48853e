#!/usr/bin/env bash
# The operator console in a real browser (the test command calls this): Debian's
# Chromium, headless, driven by playwright-core (tests/browser/browse.js), with its own
# TLS stack. A CA (`crank ca serve`, the debug build) with an administrator, a plain
# worker and a revoked certificate; each browser gets an NSS database that trusts the
# CA and holds one client certificate (or none). Checks, on the DOM:
#   - the administrator sees the overview (one revoked certificate, the CRL, a healthy
#     replica), the ledger searched by worker id and by serial with the revoked
#     certificate marked, and that certificate's page;
#   - a plain worker's certificate gets 403 naming the capability ca.console;
#   - a browser without a client certificate gets 401.
# Screenshots go to $CARGO_TARGET_DIR (or target)/browser-screenshots/. Installs
# chromium, libnss3-tools and Node.js (Debian) and playwright-core (npm) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
apt_install "${missing[@]}"
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent; })

target="${CARGO_TARGET_DIR:-target}"
[[ $target == /* ]] || target="$root/$target"
bin="$target/debug"
shots="$target/browser-screenshots"
mkdir -p "$shots"
[ -x "$bin/crank" ] || { echo "$bin/crank is missing: cargo build --workspace --bins first" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
crank() { RUST_LOG=error "$bin/crank" "$@"; }

port=$(free_port)
crank ca init --dir "$work/ca" >/dev/null
RUST_LOG=error "$bin/crank" ca serve --dir "$work/ca" --listen "127.0.0.1:$port" >"$work/ca.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf --cacert "$work/ca/root.crt" "https://localhost:$port/health" >/dev/null && break; sleep 0.1; done
ca="https://localhost:$port"
crank ca admin-cert --dir "$work/ca" --name alice --out "$work/admin" >/dev/null
for w in ops mallory; do
    crank cert init --worker-id "$w" --token "$(crank token create --dir "$work/ca" --worker-id "$w")" \
        --ca-url "https://127.0.0.1:$port" --cert-dir "$work/$w" >/dev/null
done
serial=$(crank cert inspect --json "$work/mallory/client.crt" | python3 -c 'import json, sys; print(json.load(sys.stdin)["serial"])')
crank revoke --admin-dir "$work/admin" --ca-url "https://127.0.0.1:$port" --serial "$serial" --reason keyCompromise >/dev/null
# The overview lists replicas from their heartbeats (every 10 s, the first at start).
sleep 1

# nss_home DIR [CLIENT.crt CLIENT.key]: a HOME whose NSS database trusts the CA and
# holds that client certificate and key.
nss_home() {
    local db="$1/.pki/nssdb"
    mkdir -p "$db"
    certutil -N -d "sql:$db" --empty-password
    certutil -A -d "sql:$db" -n crank-ca -t C,, -i "$work/ca/root.crt"
    if [ -n "${2:-}" ]; then
        openssl pkcs12 -export -in "$2" -inkey "$3" -name client -passout pass: -out "$1/client.p12"
        pk12util -i "$1/client.p12" -d "sql:$db" -W '' >/dev/null
    fi
}
nss_home "$work/home-admin" "$work/admin/admin.crt" "$work/admin/admin.key"
nss_home "$work/home-ops" "$work/ops/client.crt" "$work/ops/client.key"
nss_home "$work/home-none"

typed=$(echo "$serial" | tr -d ':' | tr 'a-f' 'A-F' | cut -c1-10)
failed=0
browse() { CHROMIUM=/usr/lib/chromium/chromium node tests/browser/browse.js "$@" || failed=1; }
browse "$ca/console" "$work/home-admin" "$shots/console-overview.png" \
    status:200 'has:#count-revoked=1' 'count:#crl-number=1' 'has:#replicas .badge=healthy' 'text:CA crank.local'
browse "$ca/console/certificates?q=mallory" "$work/home-admin" "$shots/console-search-worker.png" \
    status:200 'count:#certificates tr[data-worker]=1' "has:tr.revoked[data-serial=\"$serial\"] .badge=revoked"
browse "$ca/console/certificates?q=$typed" "$work/home-admin" "$shots/console-search-serial.png" \
    status:200 "count:tr[data-serial=\"$serial\"]=1"
browse "$ca/console/certificates" "$work/home-admin" "$shots/console-certificates.png" \
    status:200 'count:#certificates tr[data-serial]=3' 'count:#certificates tr.revoked=1' 'has:#certificates=alice'
browse "$ca/console/certificates/$serial" "$work/home-admin" "$shots/console-certificate.png" \
    status:200 'has:#state=revoked' 'has:#lifecycle=revoked (keyCompromise)' 'has:#details=spiffe://crank.local/worker/mallory'
browse "$ca/console" "$work/home-ops" "$shots/console-plain-worker.png" status:403 'text:ca.console'
browse "$ca/console" "$work/home-none" "$shots/console-no-certificate.png" status:401
[ "$failed" = 0 ] || { echo "the console failed in the browser; the CA's log:" >&2; tail -20 "$work/ca.log" >&2; exit 1; }
echo "console in Chromium: all checks passed (screenshots in $shots)"
