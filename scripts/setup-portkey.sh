#!/usr/bin/env bash
# Installs the Portkey AI gateway (npm `@portkey-ai/gateway`), the second peer that
# `orchestrator-bench --peer portkey` and scripts/bench-gateway.sh measure next to the gateway,
# into .portkey/ at the repository root, and prints the path of its server script on stdout
# (progress goes to stderr). Idempotent: an existing install of the pinned version is kept.
#
#   bash scripts/setup-portkey.sh            # -> /path/to/.portkey/node_modules/@portkey-ai/gateway/build/start-server.js
#
# Needs Node.js 18 or newer and npm (Debian's `nodejs` and `npm` packages). Start the server with
# `node START_SERVER_JS --port=PORT --headless`; it routes each request by its headers
# (`x-portkey-provider: openai`, `x-portkey-custom-host: http://HOST:PORT/v1`), so it needs no
# configuration file. The version is pinned exactly so that two runs measure the same peer.
# The directory writes its own `.gitignore` (`*`), so it needs no entry in the repository's.
set -euo pipefail
cd "$(dirname "$0")/.."
PORTKEY_VERSION="1.15.2"
DIR=.portkey
PKG="$DIR/node_modules/@portkey-ai/gateway"
SERVER="$PWD/$PKG/build/start-server.js"

for tool in node npm; do
    command -v "$tool" >/dev/null || {
        echo "$tool is needed (Debian: apt-get install -y nodejs npm)" >&2
        exit 1
    }
done
node -e 'process.exit(parseInt(process.versions.node) >= 18 ? 0 : 1)' || {
    echo "Portkey's gateway needs Node.js 18 or newer; this is $(node --version)" >&2
    exit 1
}

installed() {
    [ -f "$SERVER" ] && [ "$(node -p "require('./$PKG/package.json').version" 2>/dev/null)" = "$PORTKEY_VERSION" ]
}

if ! installed; then
    echo "== installing @portkey-ai/gateway@$PORTKEY_VERSION into $DIR" >&2
    mkdir -p "$DIR"
    printf '*\n' >"$DIR/.gitignore"
    # A package.json of its own keeps npm from walking up to another project's.
    [ -f "$DIR/package.json" ] || printf '{ "private": true }\n' >"$DIR/package.json"
    npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error \
        --save-exact "@portkey-ai/gateway@$PORTKEY_VERSION" >&2
    installed || { echo "@portkey-ai/gateway $PORTKEY_VERSION did not install" >&2; exit 1; }
fi
echo "$SERVER"
