#!/usr/bin/env bash
# The import-layer contracts (pyproject.toml, [tool.importlinter]), then the whole test suite (slow tests included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
.venv/bin/lint-imports --no-cache --no-logo
exec .venv/bin/python -m pytest "$@"
