#!/usr/bin/env bash
# Creates .venv at the repository root with the official `openai` Python SDK, which the gateway's
# end-to-end test uses as a real client. Idempotent: an existing venv with the SDK is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION="3.57.0"
if [ -x .venv/bin/python ] && .venv/bin/python -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
    exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
echo "Python venv ready: .venv (openai $OPENAI_VERSION)"
