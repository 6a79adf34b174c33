#!/usr/bin/env bash
# The project's test command: every unit, integration, property and doc test in the workspace,
# including the gateway's end-to-end test with the official openai Python SDK.
# README.md names this script; .ci/run calls it after the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-python.sh
cargo test --workspace --all-targets
# Doc tests (including the README example) are not part of --all-targets.
cargo test --workspace --doc
