#!/usr/bin/env bash
# The import-layer contracts (pyproject.toml, [tool.importlinter]), then the whole test suite (slow tests included),
# one test file per worker on two workers (SEQEXPORT_TEST_WORKERS; 0 runs them in this process): a verification
# runs in one fresh process on one core, so a second file keeps the other core busy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
.venv/bin/lint-imports --no-cache --no-logo
exec .venv/bin/python -m pytest -n "${SEQEXPORT_TEST_WORKERS:-2}" --dist loadfile "$@"
