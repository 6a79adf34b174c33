#!/usr/bin/env bash
# The project's test command: every unit, integration, property and doc test in the workspace,
# including the gateway's end-to-end test with the official openai Python SDK and the cluster's
# tests against a real nats-server; the gateway's suite runs twice, the second time per-core.
# README.md names this script; .ci/run calls it after the format and lint checks.
#
# ORCHESTRATOR_REAL_LLM=1 adds the backends against real model servers: it prepares llama-server
# and llama-cpp-python with a real model (scripts/setup-llm.sh; a build from source of several
# minutes each the first time, reused after) and makes their tests required. CI leaves it unset:
# the builds took longer than the rest of CI together (docs/operations.md, "Tests against real
# model servers"). Unset, those tests are reported as ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-python.sh
bash scripts/setup-nats.sh
bash scripts/setup-ui.sh
case "${ORCHESTRATOR_REAL_LLM:-}" in
    "" | 0 | false) ;;
    *) bash scripts/setup-llm.sh all ;;
esac
cargo test --workspace --all-targets
# The gateway's suite once more with every gateway in `[runtime] mode = "per_core"`.
ORCHESTRATOR_TEST_RUNTIME=per_core cargo test -p orchestrator-server --test it
case "${ORCHESTRATOR_REAL_LLM:-}" in
    "" | 0 | false) ;;
    *) cargo test -p orchestrator-backends --test real_servers -- --ignored ;;
esac
# Doc tests (including the README example) are not part of --all-targets.
cargo test --workspace --doc
