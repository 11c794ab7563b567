"""The server's defaults, apart from the server itself: the CLI shows them in `--help` without
importing the server (its gRPC, aiohttp and numpy imports)."""

from __future__ import annotations

import os

DEFAULT_HOST = "127.0.0.1"
# Both front ends refuse a request body (gRPC message or HTTP body) larger than
# this: 64 MiB carries a float32 chunk of 16M values, far above any streaming chunk.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# TF Serving's --grpc_max_threads and --rest_api_num_threads default to 4 x the CPUs (server.h).
DEFAULT_GRPC_WORKERS = 4 * (os.cpu_count() or 1)
DEFAULT_REST_WORKERS = DEFAULT_GRPC_WORKERS
DEFAULT_REST_MAX_CONNECTIONS = 1024
DEFAULT_REST_BACKLOG = 1024

DEFAULT_POLL_SECONDS = 1.0
DEFAULT_MAX_NUM_LOAD_RETRIES = 5  # TF Serving's --max_num_load_retries (server.h)
DEFAULT_LOAD_RETRY_INTERVAL_S = 60.0  # TF Serving's --load_retry_interval_micros, 1 minute (server.h)
