#!/usr/bin/env bash
# The whole test suite (slow tests included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec .venv/bin/python -m pytest "$@"
