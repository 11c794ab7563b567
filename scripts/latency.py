"""Per-chunk latency of `stream` over gRPC, REST, in-process and Triton: `python scripts/latency.py [BASE [NAME]]`.

The measurement is `exporter.tools.latency` (see its docstring).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from exporter.tools.latency import main  # noqa: E402

if __name__ == "__main__":
    main()
