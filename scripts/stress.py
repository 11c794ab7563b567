"""Load test of `seqexport serve`: `python scripts/stress.py [BASE] [--name NAME] [--small] [--json]`.

Same as `seqexport stress`: 64 concurrent streaming sessions x 200 chunks with 10%
bad requests against `seqexport serve` on 127.0.0.1, until 20,000 requests; prints
requests/s, p50/p99 latency, answers by code, the server's memory, and exits 1 if
a result was wrong, a good request was dropped, a bad one got the wrong code, the
memory grew over 50 MB, or the version published mid-run was not picked up.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.cli.app import app  # noqa: E402

if __name__ == "__main__":
    app(["stress", *sys.argv[1:]])
