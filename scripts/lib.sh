# Shared by the test scripts (sourced, not run).
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

# apt_install PACKAGE...: installs these Debian packages (none given: nothing to do),
# waiting up to two minutes for another apt or dpkg run to let go of the lock.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    echo "installing $*"
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq "$@"
}
