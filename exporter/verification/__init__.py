"""Verification in a fresh process: `run` starts it, `worker` runs the checks, `batch` and `foreign` help."""
