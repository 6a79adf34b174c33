#!/usr/bin/env bash
# Installs nats-server (with JetStream) from Debian's packages when it is missing: the cluster
# tests start their own server on a free port. scripts/test.sh runs this.
set -euo pipefail
if command -v nats-server >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "nats-server is missing and this system has no apt-get: install nats-server 2.9 or later" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
echo "Installing nats-server from Debian's packages." >&2
$sudo apt-get update -qq
$sudo apt-get install -y -qq nats-server >/dev/null
nats-server --version
