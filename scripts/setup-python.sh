#!/usr/bin/env bash
# Creates .venv at the repository root with the official `openai` and `anthropic` Python SDKs,
# which the gateway's end-to-end tests use as real clients. Idempotent: an existing venv with both
# SDKs at these versions is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION="3.57.0"
ANTHROPIC_VERSION="2.17.0"
if [ -x .venv/bin/python ] && .venv/bin/python -c "import openai, anthropic, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION' or anthropic.__version__ != '$ANTHROPIC_VERSION')" 2>/dev/null; then
    exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" "anthropic==$ANTHROPIC_VERSION"
echo "Python venv ready: .venv (openai $OPENAI_VERSION, anthropic $ANTHROPIC_VERSION)"
