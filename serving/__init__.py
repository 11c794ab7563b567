"""Serving an export: TF Serving's configs and deploy files, warmup, clients, the local server, the TF Serving check.

It reads exports through `exporter.artifact` only (import-linter holds it to that).
"""
