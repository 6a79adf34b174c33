# Installing Debian packages for the setup scripts (sourced, not run).
#
# debian_install WHAT PACKAGE...: installs the packages with apt-get (through sudo when not root),
# or fails naming WHAT to install by hand on a system without apt-get.
debian_install() {
    local what=$1
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$* missing and this system has no apt-get: install $what" >&2
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo="sudo"
    fi
    echo "Installing $* from Debian's packages." >&2
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "$@" >/dev/null
}
