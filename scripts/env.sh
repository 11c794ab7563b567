#!/usr/bin/env bash
# Creates .venv from requirements.lock when it is missing or stale; sourced by the other scripts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "seqexport needs Python 3.11 (found: $("$python_bin" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
stamp=".venv/.seqexport-lock"
wanted="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "setting up .venv from requirements.lock (first run: a few minutes)" >&2
  "$python_bin" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  # nvidia-pytriton (the real tritonserver for `seqexport check triton`) asks for numpy<2 for its own
  # Python API, which seqexport does not use: it is installed without its dependencies.
  grep -v '^nvidia-pytriton==' requirements.lock > .venv/.requirements-resolved
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r .venv/.requirements-resolved
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $(grep '^nvidia-pytriton==' requirements.lock)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$wanted" > "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
