#!/usr/bin/env bash
# Installs what the dashboard and `orchestrator top` tests drive, from Debian's packages when
# missing: headless Chromium with its chromedriver, and tmux. scripts/test.sh runs this.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "Missing ${missing[*]} and this system has no apt-get: install Chromium, chromedriver and tmux" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
echo "Installing ${missing[*]} from Debian's packages." >&2
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
