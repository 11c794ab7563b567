"""Names of functions an export keeps beside its signatures (no TensorFlow import here)."""


def no_xla_name(signature: str) -> str:
    """Attribute of a `--jit` export holding the signature's function without XLA."""
    return f"{signature}_no_xla"


def unfused_name(signature: str) -> str:
    """Signature of an export holding a fused signature's while_loop twin (exporter/fused.py)."""
    return f"{signature}_unfused"
