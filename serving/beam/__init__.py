"""Apache Beam transforms over seqexport exports (the optional `beam` extra).

`StreamSessions` streams each key's chunks with the key's state kept by Beam;
`SeqExportModelHandler` scores whole sequences with `RunInference`.
"""

try:
    import apache_beam  # noqa: F401
except ImportError as exc:  # the optional extra
    raise ImportError("serving.beam needs Apache Beam: pip install 'seqexport[beam]'") from exc

from serving.beam.inference import SeqExportModelHandler
from serving.beam.sessions import (
    DEAD_LETTER,
    OUTPUTS,
    DeadLetter,
    Reason,
    StreamOptions,
    StreamSessions,
    StreamSessionsFn,
    shard_of,
)

__all__ = ["DEAD_LETTER", "OUTPUTS", "DeadLetter", "Reason", "SeqExportModelHandler", "StreamOptions",
           "StreamSessions", "StreamSessionsFn", "shard_of"]
