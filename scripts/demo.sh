#!/usr/bin/env bash
# The main job on the built-in example: train a small stateful LSTM+GRU model, export it,
# verify it in a fresh process, publish it under demo-out/models/demo/<version>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec .venv/bin/seqexport demo "$@"
