"""Benchmark: `python scripts/bench.py [--quick] [--out DIR]` (same as `seqexport bench`)."""

import sys

from exporter.cli.app import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
