"""TF Serving config schemas that `tensorflow-serving-api` does not ship.

`session_bundle_config_pb2.BatchingParameters` (the `--batching_parameters_file`
message) and `monitoring_config_pb2.MonitoringConfig` (`--monitoring_config_file`):
same package and field numbers as TF Serving's own protos, so text files written
from them are read by `tensorflow_model_server`. The `_pb2` modules are generated
by `python -m serving.protos.build` and committed; a test fails when they drift.
"""
