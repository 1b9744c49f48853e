#!/usr/bin/env bash
# Runs the images for real (the test command calls this): builds them
# (scripts/build-images.sh), then a CA container and a hello-world container bootstrap
# and answer over mTLS on the host network, as uid 1000 with a read-only root
# filesystem, no capabilities and no privilege escalation. Checks:
#   - `crank ca init`, `crank token create` and `crank cert init` run in the crank image;
#   - the CA's and hello-world's probe ports answer /readyz with no client certificate,
#     and hello-world's image HEALTHCHECK passes (`podman healthcheck run`);
#   - a client certificate from the CA gets 200 and its own identity from /whoami, and a
#     client without one is refused by hello-world's main port;
#   - every container process runs as uid 1000 on a read-only root.
# Needs root (podman with vfs storage). docs/deploy.md, "Images".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-images.sh
# shellcheck source=scripts/podman-env.sh
source scripts/podman-env.sh

work=$(mktemp -d)
names=()
cleanup() {
    for n in "${names[@]}"; do podman_ rm -f -t 2 "$n" >/dev/null 2>&1 || true; done
    rm -rf "$work" "$podman_conf_dir"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    for n in "${names[@]}"; do
        echo "--- logs of $n" >&2
        podman_ logs "$n" 2>&1 | tail -20 >&2 || true
    done
    exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Volumes owned by the image's user, as an operator would provision them.
for d in ca hello ops; do
    mkdir -p "$work/$d"
    chown 1000:1000 "$work/$d"
    chmod 0700 "$work/$d"
done
# No healthcheck timers (they need systemd); `podman healthcheck run` runs them below.
hardened=(--network host --user 1000:1000 --read-only --cap-drop ALL --security-opt no-new-privileges
    --health-interval disable)
crank_in() { # VOLUME ARGS...: a one-shot crank container with VOLUME at /var/lib/crank
    local volume=$1
    shift
    podman_ run --rm "${hardened[@]}" -v "$work/$volume:/var/lib/crank" crank-security/crank:latest "$@"
}
wait_ready() { # PORT WHAT
    for _ in $(seq 100); do
        curl -ksf "https://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.3
    done
    fail "$2 never became ready on its probe port $1"
}

ca_port=$(free_port)
ca_probe=$(free_port)
hello_port=$(free_port)
# hello-world keeps the image's probe port (8600), so that the image's own HEALTHCHECK
# is what runs.
hello_probe=8600
if curl -ks "https://127.0.0.1:$hello_probe/" >/dev/null 2>&1 || (exec 3<>"/dev/tcp/127.0.0.1/$hello_probe") 2>/dev/null; then
    fail "port $hello_probe is taken on this host; the hello-world container needs it"
fi

crank_in ca ca init --dir /var/lib/crank/ca >/dev/null || fail "crank ca init in the container"
names+=("crank-ca-$$")
podman_ run -d --name "crank-ca-$$" "${hardened[@]}" -v "$work/ca:/var/lib/crank" \
    -e CRANK_PROBE_PORT="$ca_probe" \
    --health-cmd "[\"/usr/local/bin/crank-probe\", \"https://localhost:$ca_probe/readyz\"]" \
    crank-security/crank:latest ca serve --dir /var/lib/crank/ca --listen "127.0.0.1:$ca_port" >/dev/null
wait_ready "$ca_probe" "the CA"
echo "CA container ready (probe $ca_probe)"

token=$(crank_in ca token create --dir /var/lib/crank/ca --worker-id hello-world) || fail "crank token create"
names+=("crank-hello-$$")
podman_ run -d --name "crank-hello-$$" "${hardened[@]}" -v "$work/hello:/var/lib/crank" \
    -e CRANK_JOIN_TOKEN="$token" -e CA_SERVICE_URL="https://127.0.0.1:$ca_port" \
    -e HELLO_WORLD_HTTPS_PORT="$hello_port" -e CRANK_LISTEN_HOST=127.0.0.1 \
    crank-security/hello-world:latest >/dev/null
wait_ready "$hello_probe" "hello-world"
echo "hello-world container ready (probe $hello_probe)"

podman_ healthcheck run "crank-hello-$$" || fail "hello-world's image HEALTHCHECK failed"
podman_ healthcheck run "crank-ca-$$" || fail "the CA's healthcheck failed"
echo "healthchecks pass"

# A client identity from the CA, made in the crank image.
ops_token=$(crank_in ca token create --dir /var/lib/crank/ca --worker-id ops)
crank_in ops cert init --worker-id ops --token "$ops_token" --ca-url "https://127.0.0.1:$ca_port" \
    --cert-dir /var/lib/crank >/dev/null || fail "crank cert init in the container"
whoami=$(curl -sf --cert "$work/ops/client.crt" --key "$work/ops/client.key" --cacert "$work/ops/ca.crt" \
    "https://127.0.0.1:$hello_port/whoami") || fail "an mTLS call to the hello-world container failed"
echo "$whoami" | grep -q 'spiffe://crank.local/worker/ops' || fail "whoami answered $whoami"
echo "mTLS call answered: $whoami"
if curl -ks --max-time 5 "https://127.0.0.1:$hello_port/health" >/dev/null 2>&1; then
    fail "hello-world's main port answered a client without a certificate"
fi

for n in "crank-ca-$$" "crank-hello-$$"; do
    pid=$(podman_ inspect --format '{{.State.Pid}}' "$n")
    uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
    [ "$uids" = "1000 1000 1000 1000" ] || fail "$n runs with uids $uids"
    gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
    [ "$gids" = "1000 1000 1000 1000" ] || fail "$n runs with gids $gids"
    caps=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
    [ "$caps" = "0000000000000000" ] || fail "$n has effective capabilities $caps"
    awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | grep -qE '(^|,)ro(,|$)' || fail "$n's root is not read-only"
    grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$pid/status" || fail "$n may gain privileges"
    echo "$n: uid/gid 1000, no capabilities, read-only root, no new privileges"
done
# The private keys written through the volumes are 0600 and owned by 1000.
for key in "$work/hello/client.key" "$work/ops/client.key"; do
    [ "$(stat -c '%a %u' "$key")" = "600 1000" ] || fail "$key is $(stat -c '%a %u' "$key")"
done
echo "images: all checks passed"
