"""`serving.beam` on Beam's in-process runners, against the real demo export (LSTM -> GRU, verified)."""

from __future__ import annotations

import threading
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream

TestStream.__test__ = False  # a Beam source, not a test class
from apache_beam.transforms.window import TimestampedValue

from serving.beam import DEAD_LETTER, OUTPUTS, Reason, StreamSessions, StreamSessionsFn

FEATURES = 4  # the demo model's
_COLLECTED: dict[str, list] = {}
_LOCK = threading.Lock()


class _Collect(beam.DoFn):
    """Keeps what reaches it in this process (the in-process runners run here), by run id."""

    def __init__(self, run_id: str):
        self._run_id = run_id

    def process(self, element):
        with _LOCK:
            _COLLECTED.setdefault(self._run_id, []).append(element)


def run_pipeline(make_input, transform, runner, streaming: bool = False):
    """(outputs, dead letters, metrics result) of `make_input(pipeline) | transform`."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(flags=[])
    options.view_as(StandardOptions).streaming = streaming
    run_id = uuid.uuid4().hex
    pipeline = beam.Pipeline(runner=runner, options=options)
    result = make_input(pipeline) | transform
    result[OUTPUTS] | "CollectOutputs" >> beam.ParDo(_Collect(run_id + "/out"))
    result[DEAD_LETTER] | "CollectDead" >> beam.ParDo(_Collect(run_id + "/dead"))
    run = pipeline.run()
    run.wait_until_finish()
    return _COLLECTED.pop(run_id + "/out", []), _COLLECTED.pop(run_id + "/dead", []), run


def chunked(keys, x, rng, max_chunk=7):
    """Each key's sequence cut at random points: [(key, (seq_no, chunk))]."""
    elements = []
    for key, seq in zip(keys, x):
        cuts = np.sort(rng.choice(np.arange(1, seq.shape[0]), size=rng.integers(0, 6), replace=False))
        for seq_no, chunk in enumerate(np.split(seq, cuts)):
            elements.append((key, (seq_no, chunk)))
    return elements


def by_key(outputs) -> dict[str, list]:
    rows: dict[str, list] = {}
    for key, (seq_no, out) in outputs:
        rows.setdefault(key, []).append((seq_no, out))
    return rows


def worst_error(outputs, keys, reference, tolerance, n_chunks) -> tuple[float, float]:
    """(max |got - want|, max of |got - want| - (atol + rtol |want|)) over every key; asserts each key's
    seq_nos came once each, in full."""
    rows = by_key(outputs)
    assert sorted(rows) == sorted(keys), f"keys missing: {sorted(set(keys) - set(rows))[:5]}"
    worst, over = 0.0, -np.inf
    for key, want in zip(keys, reference):
        seq_nos = sorted(s for s, _ in rows[key])
        assert seq_nos == list(range(n_chunks[key])), f"key {key!r} got seq_nos {seq_nos}"
        got = np.concatenate([out for _, out in sorted(rows[key], key=lambda r: r[0])])
        err = np.abs(got - want)
        worst = max(worst, float(err.max()))
        over = max(over, float((err - (tolerance.atol + tolerance.rtol * np.abs(want))).max()))
    return worst, over


@pytest.fixture(scope="module")
def demo(demo_export):
    from serving.client import SavedModelBackend

    backend = SavedModelBackend(demo_export.path)
    assert backend.served.manifest.batch_independent is True, "the demo export is expected to prove batch independence"
    return demo_export.path, backend, backend.served.manifest.options.tolerance


def exact_run(demo, *, n_keys, steps, seed, runner, fn_class=StreamSessionsFn, **options):
    path, backend, tolerance = demo
    rng = np.random.default_rng(seed)
    keys = [f"user-{i}" for i in range(n_keys)]
    x = rng.normal(size=(n_keys, steps, FEATURES)).astype("float32")
    reference = backend.predict({"inputs": x})["outputs"]
    elements = chunked(keys, x, rng)
    rng.shuffle(elements)
    n_chunks = {k: 0 for k in keys}
    for key, _ in elements:
        n_chunks[key] += 1
    transform = StreamSessions(path, **options)
    transform.fn_class = fn_class
    outputs, dead, run = run_pipeline(lambda p: p | beam.Create(elements, reshuffle=False), transform, runner)
    assert dead == [], dead[:3]
    worst, over = worst_error(outputs, keys, reference, tolerance, n_chunks)
    return worst, over, len(elements), run


def batch_rows(run) -> tuple[int, int]:
    """(most rows in one `stream` call, chunks applied) from the pipeline's metrics."""
    from apache_beam.metrics.metric import MetricsFilter

    metrics = run.metrics().query(MetricsFilter().with_namespace("seqexport"))
    rows = [d.committed for d in metrics["distributions"] if d.key.metric.name == "stream_batch_rows"]
    chunks = [c.committed for c in metrics["counters"] if c.key.metric.name == "chunks_applied"]
    return max(r.max for r in rows), sum(chunks)


def test_200_shuffled_keys_match_serving_default_batched_across_keys(demo):
    worst, over, n_chunks, run = exact_run(demo, n_keys=200, steps=24, seed=0, runner=FnApiRunner(), num_shards=8)
    most_rows, applied = batch_rows(run)
    print(f"\n200 keys, {n_chunks} chunks shuffled, batched (most rows per stream call: {most_rows}): worst |error| "
          f"{worst:.3g}, worst margin over the tolerance {over:.3g} (tolerance {demo[2]})")
    assert over <= 0, f"outputs differ from serving_default beyond {demo[2]}: worst |error| {worst}"
    assert applied == n_chunks
    assert most_rows > 1, "the export proves batch independence, yet no stream call batched several keys"


def test_without_batching_each_call_has_one_key(demo):
    worst, over, n_chunks, run = exact_run(demo, n_keys=30, steps=12, seed=1, runner=FnApiRunner(), num_shards=4,
                                           batch_across_keys=False)
    print(f"\n30 keys, {n_chunks} chunks, one key per call: worst |error| {worst:.3g} (tolerance {demo[2]})")
    assert over <= 0, worst
    assert batch_rows(run) == (1, n_chunks)


_ATTEMPTS = threading.local()
_FAILURES = {"count": 0}


class _FailsFirstAttempt(StreamSessionsFn):
    """Raises at the end of the first attempt at every bundle (after its state writes and outputs); a retry
    of a bundle runs on the same thread right after, and passes."""

    def finish_bundle(self):
        if not getattr(_ATTEMPTS, "failed", False):
            _ATTEMPTS.failed = True
            with _LOCK:
                _FAILURES["count"] += 1
            raise RuntimeError("injected failure: first attempt at this bundle")
        _ATTEMPTS.failed = False


@pytest.mark.slow
def test_retried_bundles_apply_each_chunk_once(demo):
    _FAILURES["count"] = 0
    worst, over, n_chunks, run = exact_run(demo, n_keys=200, steps=16, seed=2, runner=BundleBasedDirectRunner(),
                                           num_shards=8, fn_class=_FailsFirstAttempt)
    print(f"\n200 keys, {n_chunks} chunks, every bundle failed once then retried ({_FAILURES['count']} failures "
          f"survived): worst |error| {worst:.3g}, margin over the tolerance {over:.3g}")
    # Each seq_no came once per key (`worst_error`), and a chunk applied twice would shift every later output.
    assert _FAILURES["count"] > 0
    assert over <= 0, worst


def test_out_of_order_and_bad_input_go_where_they_belong(demo):
    path, backend, tolerance = demo
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 9, FEATURES)).astype("float32")
    reference = backend.predict({"inputs": x})["outputs"]
    parts = [np.split(seq, [3, 6]) for seq in x]
    elements = [
        ("late", (2, parts[0][2])), ("late", (1, parts[0][1])), ("late", (0, parts[0][0])),  # reversed
        ("fixed", (0, parts[1][0])),
        ("fixed", (1, parts[1][1][:, :3])),  # 3 features, not 4
        ("fixed", (1, parts[1][1].astype("int32"))),  # wrong dtype
        ("fixed", (1, parts[1][1])), ("fixed", (1, parts[1][1])),  # the resend, then a repeat
        ("fixed", (2, parts[1][2])),
        ("fixed", (0, parts[1][0])),  # applied already
        ("gap", (0, parts[2][0])), ("gap", (2, parts[2][2])),  # seq_no 1 never comes
        (7, (0, parts[2][0])),  # not a string key
        ("neg", (-1, parts[2][0])),
    ]
    outputs, dead, _ = run_pipeline(lambda p: p | beam.Create(elements, reshuffle=False),
                                    StreamSessions(path, num_shards=2, batch_across_keys=False), FnApiRunner())
    rows = by_key(outputs)
    assert sorted(rows) == ["fixed", "gap", "late"]
    for i, key in enumerate(["late", "fixed"]):
        assert sorted(s for s, _ in rows[key]) == [0, 1, 2]
        got = np.concatenate([o for _, o in sorted(rows[key], key=lambda r: r[0])])
        err = np.abs(got - reference[i])
        print(f"\n{key}: worst |error| {err.max():.3g} (tolerance {tolerance})")
        np.testing.assert_allclose(got, reference[i], atol=tolerance.atol, rtol=tolerance.rtol)
    assert [s for s, _ in rows["gap"]] == [0]
    reasons = sorted((str(k), d.seq_no, d.reason) for k, d in dead)
    assert reasons == [
        ("7", 0, Reason.BAD_ELEMENT),
        ("fixed", 0, Reason.REPEATED_SEQ_NO),
        ("fixed", 1, Reason.BAD_CHUNK), ("fixed", 1, Reason.BAD_CHUNK),
        ("fixed", 1, Reason.REPEATED_SEQ_NO),
        ("gap", 2, Reason.GAP_NEVER_FILLED),
        ("neg", -1, Reason.BAD_ELEMENT),
    ], reasons
    details = " | ".join(d.detail for _, d in dead)
    for needle in ("has shape [3, 3]", "dtype int32", "was applied already", "waiting for seq_no 1",
                   "must be a str", "must be an int >= 0"):
        assert needle in details, (needle, details)


def test_idle_key_is_dropped_after_the_ttl(demo):
    path, backend, tolerance = demo
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, FEATURES)).astype("float32")
    reference = backend.predict({"inputs": x})["outputs"]
    a, b = np.split(x[0], 3), np.split(x[1], 2)
    stream = (TestStream()
              .add_elements([TimestampedValue(("a", (0, a[0])), 0), TimestampedValue(("a", (2, a[2])), 1),
                             TimestampedValue(("b", (0, b[0])), 1)])
              .advance_watermark_to(5)
              .add_elements([TimestampedValue(("b", (1, b[1])), 6)])
              .advance_watermark_to(12)  # "a" idle since 1 s: dropped at 11 s; "b" (6 s) lives on
              .add_elements([TimestampedValue(("a", (1, a[1])), 13)])  # too late: "a" starts again, needs seq_no 0
              .advance_watermark_to_infinity())
    outputs, dead, _ = run_pipeline(lambda p: p | stream, StreamSessions(path, idle_timeout_s=10, num_shards=1),
                                    BundleBasedDirectRunner(), streaming=True)
    rows = by_key(outputs)
    assert [s for s, _ in rows["a"]] == [0], "key 'a' was not dropped at its TTL: its late chunk filled the gap"
    got_b = np.concatenate([o for _, o in sorted(rows["b"], key=lambda r: r[0])])
    print(f"\nkey b across the TTL of a: worst |error| {np.abs(got_b - reference[1]).max():.3g} (tolerance {tolerance})")
    np.testing.assert_allclose(got_b, reference[1], atol=tolerance.atol, rtol=tolerance.rtol)
    np.testing.assert_allclose(rows["a"][0][1], reference[0][:2], atol=tolerance.atol, rtol=tolerance.rtol)
    assert sorted((k, d.seq_no, d.reason) for k, d in dead) == [
        ("a", 1, Reason.GAP_NEVER_FILLED), ("a", 2, Reason.GAP_NEVER_FILLED)]


def test_batching_across_keys_needs_the_proof(serving_base):
    # `masked/1` is written without verification: its manifest records no batch independence.
    with pytest.raises(ValueError, match="does not record batch independence"):
        StreamSessions(serving_base / "masked" / "1", batch_across_keys=True)
    assert StreamSessions(serving_base / "masked" / "1").batch is False


def test_options_name_the_bad_value(demo):
    with pytest.raises(ValueError, match="`idle_timeout_s` must be positive"):
        StreamSessions(demo[0], idle_timeout_s=0)
    with pytest.raises(ValueError, match="`num_shards` must be positive"):
        StreamSessions(demo[0], num_shards=0)


def test_run_inference_matches_serving_default(demo, serving_base):
    from apache_beam.ml.inference.base import RunInference

    from serving.beam import SeqExportModelHandler
    from serving.client import SavedModelBackend

    rng = np.random.default_rng(5)
    for path, masked in ((demo[0], False), (serving_base / "masked" / "1", True)):
        backend = SavedModelBackend(path)
        tolerance = backend.served.manifest.options.tolerance
        features = backend.served.views["serving_default"].inputs["inputs"].shape[-1]
        lengths = rng.integers(3, 10, size=12)
        sequences = [rng.normal(size=(n, features)).astype("float32") for n in lengths]
        outputs, _, _ = _run_inference(sequences, SeqExportModelHandler(path, max_batch_size=5), RunInference)
        assert len(outputs) == len(sequences)
        worst = 0.0
        for result in outputs:
            example = result.example
            feed = {"inputs": example[None]}
            if masked:
                feed["lengths"] = np.asarray([example.shape[0]], dtype="int32")
            want = backend.predict(feed)["outputs"][0]
            assert result.inference.shape == want.shape
            worst = max(worst, float(np.abs(result.inference - want).max()))
            np.testing.assert_allclose(result.inference, want, atol=tolerance.atol, rtol=tolerance.rtol)
        print(f"\nRunInference on {path.parent.name} ({len(sequences)} sequences of 3..9 steps, batches of 5"
              f"{', padded with lengths' if masked else ''}): worst |error| {worst:.3g} (tolerance {tolerance})")


def _run_inference(sequences, handler, run_inference):
    run_id = uuid.uuid4().hex
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = (pipeline | beam.Create(sequences, reshuffle=False) | run_inference(handler)
         | beam.ParDo(_Collect(run_id)))
    pipeline.run().wait_until_finish()
    return _COLLECTED.pop(run_id, []), None, None
