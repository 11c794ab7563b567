"""The command line starts fast: `--help` loads none of the heavy packages the commands use."""

from __future__ import annotations

import json
import subprocess
import sys

from tests import REPO_ROOT

_PROBE = """
import json, sys
from typer.testing import CliRunner
from exporter.cli.app import app
result = CliRunner().invoke(app, sys.argv[1:])
loaded = [m for m in ("tensorflow", "keras", "numpy", "grpc", "aiohttp", "exporter.tools.benchmark") if m in sys.modules]
print(json.dumps({"exit_code": result.exit_code, "loaded": loaded}))
"""


def _help_imports(*args: str) -> dict:
    """`seqexport ARGS` in a fresh interpreter: its exit code and which heavy packages it imported."""
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_help_imports_neither_tensorflow_nor_numpy_nor_the_benchmark():
    for args in (["--help"], ["export", "--help"], ["bench", "--help"], ["serve", "--help"], ["check", "--help"],
                 ["convert", "--help"]):
        result = _help_imports(*args)
        assert result == {"exit_code": 0, "loaded": []}, (args, result)
