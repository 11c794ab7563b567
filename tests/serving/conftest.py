"""Shared serving fixtures: one base folder with two exports, one in-process server over it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Small, so the oversize-request tests send little; far above any chunk the tests stream.
MAX_REQUEST_BYTES = 256 * 1024


@pytest.fixture(scope="session")
def serving_base(demo_export, tmp_path_factory) -> Path:
    """BASE with `demo/1` (the verified demo export) and `masked/1` (a masked LSTM, takes `lengths`)."""
    from exporter.keras_step import step_model_from_keras
    from exporter.pipeline import write_export
    from tests.exporter import models

    base = tmp_path_factory.mktemp("serving-base")
    shutil.copytree(demo_export.path, base / "demo" / "1")
    step_model = step_model_from_keras(models.build("masking"))
    write_export(step_model, base / "masked" / "1", name="masked", source={"kind": "test", "model": "masking"})
    return base


@pytest.fixture(scope="session")
def server(serving_base):
    """`seqexport serve` in this process, on free loopback ports."""
    from serving.server import ModelServer, ServerOptions

    options = ServerOptions(base=serving_base, poll_seconds=0.2, max_request_bytes=MAX_REQUEST_BYTES)
    with ModelServer(options) as running:
        running.wait_until_available("demo", timeout=60)
        running.wait_until_available("masked", timeout=60)
        yield running


@pytest.fixture(scope="session")
def offline(serving_base):
    """The demo export loaded in this process: the offline reference."""
    from serving.client import SavedModelBackend

    return SavedModelBackend(serving_base / "demo" / "1")


@pytest.fixture()
def grpc_client(server):
    from serving.client import GrpcClient

    with GrpcClient(server.grpc_target) as client:
        yield client


@pytest.fixture()
def rest_client(server):
    from serving.client import RestClient

    with RestClient(server.rest_url) as client:
        yield client
