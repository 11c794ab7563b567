"""Replay a version's warmup records while it loads, as TF Serving does.

TF Serving reads `assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`PredictionLog`s) before it marks a version AVAILABLE, runs each request once,
and fails the load if a record cannot be parsed or run, or if there are more
than 1000. The server does the same, through the same checks as a live
request (`serving.server.predict`), so a warmup file that this server accepts is one
whose requests fit the SavedModel's signatures.
"""

from __future__ import annotations

from serving import tensors
from serving.server import predict
from serving.server.served import ServedVersion
from serving.status import ServingError
from serving.warmup import read_warmup, warmup_file

# A record's tensors may be as large as one request.
MAX_RECORD_BYTES = 64 * 1024 * 1024


def replay(served: ServedVersion) -> int:
    """Runs every warmup record of `served`; returns how many ran (0 without a warmup file).

    Raises:
        WarmupError, ValueError: naming the record and what is wrong with it (the load then fails).
        ServingError: a record's request failed, with that request's code.
    """
    path = warmup_file(served.path)
    if not path.is_file():
        return 0
    count = 0
    for count, log in enumerate(read_warmup(path), start=1):
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(
                f"warmup record {count} of {path} is a {log.WhichOneof('log_type')}; this server replays "
                "predict_log records only."
            )
        request = log.predict_log.request
        try:
            arrays = {
                key: tensors.from_tensor_proto(key, proto, max_bytes=MAX_RECORD_BYTES)
                for key, proto in request.inputs.items()
            }
            predict.run(served, request.model_spec.signature_name, arrays, list(request.output_filter))
        except ServingError as exc:  # the load fails with the request's own code, as in TF Serving
            raise ServingError(exc.code, f"warmup record {count} of {path} failed: {exc}") from None
    return count
