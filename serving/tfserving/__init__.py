"""Proof that TF Serving loads and runs a version, without its binary: its C++ loader's C API path."""
