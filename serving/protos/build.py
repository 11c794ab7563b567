"""Generate the `_pb2` modules of this package with grpcio-tools' protoc.

Run `python -m serving.protos.build` from the repository root after editing a
`.proto` file; `tests/serving/test_protos.py` regenerates into a temporary
folder and fails when the committed modules differ.
"""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTOS = ("session_bundle_config.proto", "monitoring_config.proto")


def generate(out_dir: Path) -> list[Path]:
    """Writes `serving/protos/<name>_pb2.py` for every proto under `out_dir`; returns them.

    protoc runs in a child process (`python -m grpc_tools.protoc`): its compiler
    extension and TensorFlow's libraries both carry protobuf's C++ runtime, and
    loading both into one process crashes it.

    Raises:
        RuntimeError: protoc reported an error (its message is included).
    """
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Paths relative to the repository root, so the descriptors are named
    # `serving/protos/<file>.proto` and never clash with another package's file.
    sources = [str((PACKAGE_DIR / name).relative_to(REPO_ROOT)) for name in PROTOS]
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO_ROOT}", f"-I{well_known}",
               f"--python_out={out_dir}", *sources]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"protoc failed with exit code {proc.returncode} on {sources}: {proc.stderr.strip()}")
    return [out_dir / Path(s).with_name(Path(s).stem + "_pb2.py") for s in sources]


def main() -> None:
    written = generate(REPO_ROOT)
    for path in written:
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    sys.exit(main())
