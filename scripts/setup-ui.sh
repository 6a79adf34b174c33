#!/usr/bin/env bash
# Installs what the dashboard and `orchestrator top` tests drive, from Debian's packages when
# missing: headless Chromium with its chromedriver, and tmux. scripts/test.sh runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
# shellcheck source=lib/debian.sh
source scripts/lib/debian.sh
debian_install "Chromium, chromedriver and tmux" "${missing[@]}"
