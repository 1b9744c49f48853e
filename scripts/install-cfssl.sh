#!/usr/bin/env bash
# Installs cfssl 1.6 or newer when it is missing: the cfssl signer's tests and the
# side-by-side benchmarks run a real `cfssl serve`.
#
# Debian 12's golang-cfssl is cfssl 1.2.0, which cannot write URI SANs, so it cannot put
# a SPIFFE ID in a certificate. Debian 13's package (cfssl 1.6.5) runs on Debian 12 (it
# needs libc6 >= 2.34 and libsqlite3-0 >= 3.36); it is fetched from the Debian archive,
# checked against its pinned SHA-256 and installed on its own, without a Debian 13 apt
# source.
set -euo pipefail

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
# Waits up to two minutes for another apt or dpkg run to let go of the lock.
apt_get() {
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 "$@"
}

cfssl_deb=golang-cfssl_1.6.5-2+b9_amd64.deb
cfssl_deb_url=http://deb.debian.org/debian/pool/main/g/golang-github-cloudflare-cfssl/$cfssl_deb
cfssl_deb_sha256=5b1f4117ef345f7d63c9311e00361a123460e3cf249696c8ed28f10bbfe174a0
# The package's version: `cfssl version` of Debian's 1.6.5 build says "dev".
cfssl_version() {
    dpkg-query -W -f '${db:Status-Status} ${Version}\n' golang-cfssl 2>/dev/null | awk '$1 == "installed" { print $2 }'
}
if ! command -v cfssl >/dev/null 2>&1 || ! dpkg --compare-versions "$(cfssl_version)" ge 1.6; then
    echo "installing cfssl 1.6.5 (golang-cfssl installed: $(cfssl_version | grep . || echo none))"
    if [ "$(dpkg --print-architecture)" != amd64 ]; then
        echo "no pinned golang-cfssl package for $(dpkg --print-architecture): install cfssl >= 1.6 yourself" >&2
        exit 1
    fi
    deb_dir=$(mktemp -d)
    trap 'rm -rf "$deb_dir"' EXIT
    curl -fsSL --retry 3 -o "$deb_dir/$cfssl_deb" "$cfssl_deb_url"
    if ! echo "$cfssl_deb_sha256  $deb_dir/$cfssl_deb" | sha256sum --check --status; then
        echo "$cfssl_deb_url does not have the expected SHA-256 $cfssl_deb_sha256:" >&2
        sha256sum "$deb_dir/$cfssl_deb" >&2
        exit 1
    fi
    chmod 755 "$deb_dir"
    apt_get update -qq
    apt_get install -y -qq "$deb_dir/$cfssl_deb"
fi

