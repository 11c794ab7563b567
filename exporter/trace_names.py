"""Names of functions an export keeps beside its signatures (no TensorFlow import here)."""


def no_xla_name(signature: str) -> str:
    """Attribute of a `--jit` export holding the signature's function without XLA."""
    return f"{signature}_no_xla"
