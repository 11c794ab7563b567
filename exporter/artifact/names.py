"""Names in an export and in TF Serving: the model name rule, the MetaGraph tag, signature and function names."""

from __future__ import annotations

import re

from exporter.artifact.errors import BadInput

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
# TF Serving model names end up in URLs (/v1/models/NAME, where '/' and ':' end the
# name), in its config files and in file names; this keeps to what all of them accept.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(name: str) -> str:
    """Returns `name` if TF Serving and every file system can use it as a model name.

    Raises:
        BadInput: it has `/`, `..`, `:`, spaces, other characters, or is too long.
    """
    if not _NAME.match(name) or ".." in name:
        raise BadInput(
            f"Model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', starting "
            "with a letter or digit, no '..', at most 128 characters (TF Serving puts it in URLs and paths)."
        )
    return name


def no_xla_name(signature: str) -> str:
    """Attribute of a `--jit` export holding the signature's function without XLA."""
    return f"{signature}_no_xla"


def unfused_name(signature: str) -> str:
    """Signature of an export holding a fused signature's while_loop twin (exporter/fused.py)."""
    return f"{signature}_unfused"
