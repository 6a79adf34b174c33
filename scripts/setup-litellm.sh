#!/usr/bin/env bash
# Creates .venv-litellm at the repository root with the LiteLLM proxy, the peer that
# `orchestrator-bench --peer litellm` measures next to the gateway, and prints the path of its
# `litellm` executable on stdout (progress goes to stderr). Idempotent: an existing venv with the
# pinned version is kept.
#
#   bash scripts/setup-litellm.sh            # -> /path/to/.venv-litellm/bin/litellm
#
# The version is pinned exactly: 1.80.0 was checked on this machine. Never use 1.107.0 (reported
# compromised). `openai<3` because litellm 1.80 imports names that the 3.x SDK removed.
# The venv writes its own `.gitignore` (`*`), so it needs no entry in the repository's .gitignore.
set -euo pipefail
cd "$(dirname "$0")/.."
LITELLM_VERSION="1.80.0"
VENV=.venv-litellm
BIN="$PWD/$VENV/bin/litellm"

installed() {
    [ -x "$BIN" ] && "$VENV/bin/python" - "$LITELLM_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(version("litellm") != sys.argv[1])
PY
}

if ! installed; then
    echo "== creating $VENV with litellm[proxy]==$LITELLM_VERSION (a few minutes)" >&2
    python3 -m venv "$VENV"
    printf '*\n' >"$VENV/.gitignore"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "litellm[proxy]==$LITELLM_VERSION" 'openai<3' >&2
    installed || { echo "litellm $LITELLM_VERSION did not install" >&2; exit 1; }
fi
echo "$BIN"
