# Shared by build-images.sh and test-images.sh (sourced): installs what podman needs on
# Debian when missing, and sets PODMAN to a podman that works without a system service:
# vfs storage, runc, and a containers.conf with no default ulimits.
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v file >/dev/null 2>&1 || missing+=(file)
apt_install "${missing[@]}"
podman_conf_dir=$(mktemp -d)
printf '[containers]\ndefault_ulimits = []\n' >"$podman_conf_dir/containers.conf"
export CONTAINERS_CONF="$podman_conf_dir/containers.conf"
PODMAN=($sudo_cmd env CONTAINERS_CONF="$CONTAINERS_CONF" podman --storage-driver vfs --runtime runc)
# Podman logs an error for each container with a healthcheck when no systemd runs its
# timers; healthchecks are run with `podman healthcheck run` instead, so those lines go.
podman_() {
    "${PODMAN[@]}" "$@" 2> >(grep -v 'unable to get systemd connection' >&2)
}
