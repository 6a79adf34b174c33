#!/usr/bin/env bash
# Installs nats-server (with JetStream) from Debian's packages when it is missing: the cluster
# tests start their own server on a free port. scripts/test.sh runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nats-server >/dev/null 2>&1; then
    exit 0
fi
# shellcheck source=lib/debian.sh
source scripts/lib/debian.sh
debian_install "nats-server 2.9 or later" nats-server
nats-server --version
