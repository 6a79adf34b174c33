#!/usr/bin/env bash
# The project's test command: every unit, integration, property and doc test in the workspace,
# including the gateway's end-to-end test with the official openai Python SDK and the backends
# against a real model on llama.cpp's llama-server.
# README.md names this script; .ci/run calls it after the format and lint checks.
#
# ORCHESTRATOR_REAL_LLM=1 also prepares llama-cpp-python (about 4 more minutes the first time) and
# makes its tests required; without it they skip. CI leaves it out: llama-server's /v1 already
# runs the OpenAI-compatible backend against a real server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-python.sh
# Reused when present; the first run builds llama-server from source (several minutes).
bash scripts/setup-llm.sh model
bash scripts/setup-llm.sh llama-server
case "${ORCHESTRATOR_REAL_LLM:-0}" in
    "" | 0 | false) ;;
    *) bash scripts/setup-llm.sh llama-cpp-python ;;
esac
cargo test --workspace --all-targets
# Doc tests (including the README example) are not part of --all-targets.
cargo test --workspace --doc
