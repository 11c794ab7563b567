"""Each verification check passes on a good export and FAILS on a broken one."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from exporter.artifact import golden_io
from exporter.artifact.manifest import read_manifest
from exporter.artifact.paths import golden_path
from exporter.artifact.specs import ExportOptions
from exporter.cli.app import app
from exporter.keras_model import step_model_from_keras
from exporter.pipeline import write_export
from exporter.verification.run import verify_in_fresh_process, verify_many_in_fresh_process
from exporter.verification.worker import CHECK_ORDER
from tests.render import assert_fits

runner = CliRunner()
NO_HVP = ExportOptions(check_hvp=False)  # these exports break other checks; hvp has its own tests


def _failing(report, check):
    rows = [c for c in report.checks if c.check == check and not c.passed]
    assert rows, f"expected a failing {check!r} row; got {report.summary()}"
    return rows


def test_demo_export_verifies_in_fresh_process(demo_export):
    report = demo_export.report
    assert report.passed, report.failures
    kinds = {c.check for c in report.checks}
    assert {"weights", "reload", "gradients", "source", "source gradients", "chunked",
            "chunked gradients"} <= kinds
    for row in report.checks:
        assert row.max_abs is not None and row.atol is not None, row


def test_verify_cli_on_published_export(demo_export):
    result = runner.invoke(app, ["verify", str(demo_export.path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["passed"] is True
    assert len(payload["checks"]) == len(demo_export.report.checks)
    # Where the time goes: one timing per check, in the order they ran, and the verifier's memory.
    assert list(payload["timings"]) == ["start", "load", *CHECK_ORDER]
    assert payload["peak_rss_mb"] > 100
    # The progress display named each check as it started (stderr is not a terminal here: lines).
    started = [line.split("verify: ", 1)[1] for line in result.stderr.splitlines() if "verify: " in line]
    assert [s.split(" (")[0] for s in started] == ["load", *CHECK_ORDER], result.stderr
    assert started[-1] == f"{CHECK_ORDER[-1]} ({len(CHECK_ORDER) - 1}/{len(CHECK_ORDER)} done)"


def test_export_records_per_check_timings_in_the_manifest(demo_export):
    manifest = read_manifest(demo_export.path)
    assert list(manifest.verify_timings) == ["start", "load", *CHECK_ORDER]
    assert manifest.verify_peak_rss_mb == demo_export.report.peak_rss_mb > 100


def test_a_verification_past_its_limit_is_a_failed_check_naming_the_option(demo_export):
    result = runner.invoke(app, ["verify", str(demo_export.path), "--verify-timeout", "1", "--json"])
    assert result.exit_code == 1, result.output  # not bad input: a check could not complete
    error = json.loads(result.stdout)["error"]
    assert "ran past its limit of 1 s during the check" in error and "--verify-timeout SECONDS" in error
    assert any(f"check {name!r}" in error for name in ["start", "load", *CHECK_ORDER]), error


@pytest.fixture(scope="module")
def broken_exports(demo_keras_file, several_output_exports, static_input_exports, sequence_input_exports,
                   tmp_path_factory):
    """Exports that are wrong in one way each, verified together in one fresh process."""
    import exporter.layers  # noqa: F401  registers GradientClip for loading

    base = tmp_path_factory.mktemp("broken")
    model = keras.saving.load_model(demo_keras_file)
    dirs = {}

    dirs["no_custom_gradients"] = base / "no_custom_gradients"
    write_export(step_model_from_keras(model), dirs["no_custom_gradients"], name="demo", options=NO_HVP,
                 source={"kind": "test"}, custom_gradients=False)

    for name, key in [("tampered_weight", "var/0"), ("tampered_step", "step/out/y"),
                      ("tampered_reference", "reference/out/outputs")]:
        dirs[name] = base / name
        write_export(step_model_from_keras(model), dirs[name], name="demo", source={"kind": "test"}, options=NO_HVP)
        golden = golden_io.load(golden_path(dirs[name]))
        golden[key] = golden[key] + np.float32(1e-2)
        golden_io.save(golden, golden_path(dirs[name]))

    from tests.exporter.factories import second_order_lost, wrong_fused, wrong_reference

    dirs["static_input_ignored"] = base / "static_input_ignored"
    write_export(_ignoring_its_static_input(), dirs["static_input_ignored"], name="s", source={"kind": "test"},
                 options=NO_HVP)

    # Second derivatives on by default (as every export has them): a reload that loses them fails.
    dirs["second_order_lost"] = base / "second_order_lost"
    write_export(second_order_lost(step_model_from_keras(model)), dirs["second_order_lost"], name="demo",
                 source={"kind": "test"})

    dirs["wrong_source"] = base / "wrong_source"
    write_export(wrong_reference(), dirs["wrong_source"], name="w", source={"kind": "test"}, options=NO_HVP)

    dirs["wrong_fused"] = base / "wrong_fused"
    write_export(wrong_fused(), dirs["wrong_fused"], name="f", source={"kind": "test"}, options=NO_HVP)

    dirs["stream_drops_state"] = base / "stream_drops_state"
    _export_with_state_dropping_stream(step_model_from_keras(model), dirs["stream_drops_state"])

    dirs["xla_differs"] = base / "xla_differs"
    _export_with_xla_signatures_off(step_model_from_keras(model), dirs["xla_differs"])

    # Several outputs: one output's golden altered, the others left as they are.
    for name, model_name, key in [("tampered_lstm_c", "head_and_lstm_states", "reference/out/lstm_final_c"),
                                  ("tampered_summary", "dict_of_outputs", "serving_default/out/summary")]:
        dirs[name] = base / name
        shutil.copytree(several_output_exports[model_name].path, dirs[name])
        golden = golden_io.load(golden_path(dirs[name]))
        golden[key] = golden[key] + np.float32(1e-2)
        golden_io.save(golden, golden_path(dirs[name]))
    # The static-input path: the source gradient w.r.t. a static input, and the static input fed to `stream`.
    for name, model_name, key in [("tampered_static_grad", "static_initial_state", "reference/grad/context"),
                                  ("tampered_static_in", "static_features_per_step", "stream/in/speaker")]:
        dirs[name] = base / name
        shutil.copytree(static_input_exports[model_name].path, dirs[name])
        golden = golden_io.load(golden_path(dirs[name]))
        golden[key] = golden[key] + np.float32(1e-2)
        golden_io.save(golden, golden_path(dirs[name]))
    # The other sequence input `b`: its one step fed to `step`, and its whole sequence fed to `serving_default`.
    for name, key in [("tampered_sequence_step_in", "step/in/b"),
                      ("tampered_sequence_predict_in", "serving_default/in/b")]:
        dirs[name] = base / name
        shutil.copytree(sequence_input_exports["two_streams_into_lstm"].path, dirs[name])
        golden = golden_io.load(golden_path(dirs[name]))
        golden[key] = golden[key] + np.float32(0.5)
        golden_io.save(golden, golden_path(dirs[name]))
    return dict(zip(dirs, verify_many_in_fresh_process(list(dirs.values()))))


def _ignoring_its_static_input():
    """A realistic bug: the export starts from the states the golden probe's static input sets, whatever
    static input it is given (as a model that drops a mask given as an input would mask nothing). On that
    probe it matches the source exactly; only a changed input shows the difference."""
    import dataclasses

    from exporter.golden import probe_inputs
    from tests.exporter import real_models

    step_model = step_model_from_keras(real_models.build("static_initial_state"))
    probe = probe_inputs(step_model, NO_HVP)
    frozen = step_model.initial_states_fn((tf.constant(probe["context"]),))
    return dataclasses.replace(step_model, initial_states_fn=lambda statics: frozen)


def _export_with_state_dropping_stream(step_model, export_dir):
    """A realistic bug: `stream` ignores the state it is given and starts from zeros."""
    from exporter import trace as trace_module

    real_unroll = trace_module.unroll

    def buggy_unroll(model, inputs, states, lengths=None, **kwargs):
        zeros = tuple(tf.zeros_like(s) for s in states)
        return real_unroll(model, inputs, zeros, lengths, **kwargs)

    trace_module.unroll = buggy_unroll
    try:
        write_export(step_model, export_dir, name="demo", source={"kind": "test"}, options=NO_HVP)
    finally:
        trace_module.unroll = real_unroll


def _export_with_xla_signatures_off(step_model, export_dir, offset=1e-3):
    """A `--jit` export whose XLA signatures compute something else than their twins without
    XLA (as a fast-math rewrite could): only the xla check compares the two."""
    from exporter import trace as trace_module

    real_signature = trace_module._signature

    def skewed_signature(inputs, body, *, jit=False):
        if not jit:
            return real_signature(inputs, body)

        def skewed(feed):
            return {k: v + offset if k in ("outputs", "y") else v for k, v in body(feed).items()}

        return real_signature(inputs, skewed, jit=True)

    trace_module._signature = skewed_signature
    try:
        write_export(step_model, export_dir, name="demo", source={"kind": "test"},
                     options=ExportOptions(check_hvp=False, jit=True))
    finally:
        trace_module._signature = real_signature


def test_lost_custom_gradients_fail_with_explanation(broken_exports):
    rows = _failing(broken_exports["no_custom_gradients"], "gradients")
    message = rows[0].message
    print(message)
    assert "No gradient defined for operation" in message and "IdentityN" in message
    assert "experimental_custom_gradients=True" in message


def test_lost_custom_gradients_cli_exit_1(broken_exports):
    path = broken_exports["no_custom_gradients"].export_dir
    result = runner.invoke(app, ["verify", path])
    assert result.exit_code == 1, result.output
    assert "IdentityN" in result.output
    print(result.stdout)
    assert_fits(result.stdout, 80)  # failed rows stay rows; their messages are notes below the table
    assert "FAIL [1]" in result.stdout and "[1] " in result.stdout
    assert "experimental_custom_gradients=True" in " ".join(result.stdout.split())


def test_higher_order_check_fails_when_second_derivatives_are_lost_on_reload(broken_exports):
    """The seed's failure through the default signatures: the exporting process computes them, a fresh one
    cannot. Each row names the signature it ran through (the fused `serving_default` itself, and `stream`
    chained over two chunks); the failure is a failure even with the check on by default."""
    rows = _failing(broken_exports["second_order_lost"], "higher order")
    assert {r.signature for r in rows} == {"serving_default", "stream x2"}
    for row in rows:
        assert "No gradient defined for operation" in row.message and "IdentityN" in row.message, row.message
    others = [c for c in broken_exports["second_order_lost"].failures if c.check != "higher order"]
    assert not others, others  # first derivatives, outputs and the rest still hold


def _load_warnings(export_dir) -> str:
    import subprocess
    import sys

    from exporter.verification.run import fresh_process_env

    loaded = subprocess.run([sys.executable, "-c", f"import tensorflow as tf; tf.saved_model.load({str(export_dir)!r})"],
                            env=fresh_process_env(), capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    return loaded.stderr


def test_loading_a_fused_export_warns_of_no_unsaved_custom_gradients(demo_export, broken_exports):
    """TF warns on load when a gradient function holds ops whose own custom gradients were not saved (the
    second derivatives that then fail): never for our exports, and it does for the broken one."""
    assert read_manifest(demo_export.path).options.fused
    assert "unsaved custom gradients" not in _load_warnings(demo_export.path)
    assert "unsaved custom gradients" in _load_warnings(broken_exports["second_order_lost"].export_dir)


def test_inputs_check_fails_when_the_export_ignores_an_input(broken_exports):
    report = broken_exports["static_input_ignored"]
    rows = _failing(report, "inputs")
    assert [(r.signature, r.tensor) for r in rows] == [("serving_default", "context")]
    print(rows[0].message)
    assert "changing 'context' moved the source's 'outputs' by up to" in rows[0].message
    assert rows[0].atol is not None and rows[0].max_abs > rows[0].atol
    # On the golden probe itself the export is right: only the changed input shows it.
    assert all(c.passed for c in report.checks if c.check == "source")
    assert all(c.passed for c in report.checks if c.check == "inputs" and not c.tensor.startswith("context"))


def test_weights_check_fails_on_changed_weight(broken_exports):
    rows = _failing(broken_exports["tampered_weight"], "weights")
    assert rows[0].max_abs == pytest.approx(1e-2, rel=1e-3) and rows[0].worst_index is not None


def test_reload_check_fails_and_names_tensor(broken_exports):
    rows = _failing(broken_exports["tampered_step"], "reload")
    assert rows[0].signature == "step" and rows[0].tensor == "y"
    assert "worst element" in rows[0].message


def test_several_outputs_fail_on_the_one_output_whose_golden_was_altered(broken_exports):
    failing = {(c.check, c.signature, c.tensor) for c in broken_exports["tampered_lstm_c"].failures}
    # The inputs check measures each input's effect from the same source outputs: it sees the change too.
    assert failing == {("source", "serving_default", "lstm_final_c"),
                       ("inputs", "serving_default", "inputs -> lstm_final_c")}
    failing = {(c.check, c.signature, c.tensor) for c in broken_exports["tampered_summary"].failures}
    # The reload of `serving_default`, and every chunking of `stream` checked against its golden
    # (`step` T times is checked against the reloaded `serving_default`, so it still passes).
    assert failing == {("reload", "serving_default", "summary"), ("chunked", "stream x1", "summary"),
                       ("chunked", "stream x2", "summary"), ("chunked", "stream x6", "summary")}


def test_a_broken_static_input_path_fails_verification(broken_exports):
    failing = {(c.check, c.signature, c.tensor) for c in broken_exports["tampered_static_grad"].failures}
    assert failing == {("source gradients", "serving_default", "d/context")}
    failing = {(c.check, c.signature, c.tensor) for c in broken_exports["tampered_static_in"].failures}
    print(sorted(failing))
    assert ("reload", "stream", "outputs") in failing
    assert ("gradients", "stream", "d/speaker") in failing
    assert all(signature == "stream" for _, signature, _ in failing)


def test_a_broken_sequence_input_fails_exactly_the_rows_that_read_it(broken_exports):
    failing = {(c.check, c.signature, c.tensor) for c in broken_exports["tampered_sequence_step_in"].failures}
    print(sorted(failing))
    # Only `step` reads `step/in/b`: its reload and its gradients; `step` x T reads `serving_default`'s inputs.
    assert {("reload", "step", "y"), ("gradients", "step", "d/b")} <= failing
    assert {(check, signature) for check, signature, _ in failing} <= {("reload", "step"), ("gradients", "step")}
    failing = {(c.check, c.signature, c.tensor) for c in broken_exports["tampered_sequence_predict_in"].failures}
    print(sorted(failing))
    # `serving_default`'s inputs feed its reload, the source check, the inputs check (each input changed from
    # them), every chunking of `stream` (each chunk cut from them) and the Hessian-vector product; `step` x T
    # is checked against the reloaded `serving_default` on the same inputs, the fused check compares two runs
    # on them, so both pass.
    assert {("reload", "serving_default", "outputs"), ("gradients", "serving_default", "d/b"),
            ("source", "serving_default", "outputs"), ("source gradients", "serving_default", "d/b"),
            ("higher order", "serving_default", "Hv/inputs")} <= failing
    for label in ("stream x1", "stream x2", "stream x6"):
        assert ("chunked", label, "outputs") in failing and ("chunked gradients", label, "d/b") in failing
    assert {signature for _, signature, _ in failing} <= {"serving_default", "stream x1", "stream x2", "stream x6"}
    assert {check for check, _, _ in failing} <= {"reload", "gradients", "source", "source gradients", "inputs",
                                                  "chunked", "chunked gradients", "higher order"}


def test_source_check_fails_when_export_differs_from_model(broken_exports):
    for name in ("tampered_reference", "wrong_source"):
        rows = _failing(broken_exports[name], "source")
        assert rows[0].max_abs == pytest.approx(1e-2 if name == "tampered_reference" else 1e-3, rel=1e-2)


def test_fused_check_fails_when_the_fused_kernel_differs_from_the_loop(broken_exports):
    rows = _failing(broken_exports["wrong_fused"], "fused")
    assert {r.signature for r in rows} == {"serving_default", "stream"}
    assert {r.tensor for r in rows} == {"outputs"}, "the states agree; only the outputs are off"
    assert rows[0].max_abs == pytest.approx(1e-3, rel=1e-2)


def test_xla_check_fails_when_an_xla_signature_differs_from_its_twin(broken_exports):
    rows = _failing(broken_exports["xla_differs"], "xla")
    assert {r.signature for r in rows} == {"serving_default", "stream", "step"}
    assert {r.tensor for r in rows} <= {"outputs", "y"}
    assert rows[0].max_abs == pytest.approx(1e-3, rel=1e-2)


def test_chunking_check_fails_when_stream_drops_state(broken_exports):
    report = broken_exports["stream_drops_state"]
    rows = _failing(report, "chunked")
    assert {r.signature for r in rows} >= {"stream x2", "stream x6"}
    assert not [r for r in rows if r.signature == "stream x1"], "one chunk has no state to drop"
    _failing(report, "chunked gradients")


def test_foreign_saved_model_reports_what_it_can(tmp_path):
    class Plain(tf.Module):
        def __init__(self):
            self.w = tf.Variable([[1.0, 2.0], [3.0, 4.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return {"y": x @ self.w}

    module = Plain()
    tf.saved_model.save(module, str(tmp_path / "plain"), signatures=module.__call__)
    report = verify_in_fresh_process(tmp_path / "plain")
    assert report.passed, report.failures
    assert {c.check for c in report.checks} == {"runs", "gradients"}


def test_verify_rejects_a_folder_that_is_not_a_saved_model(tmp_path):
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "saved_model.pb" in result.output


def test_inspect_shows_states_and_signatures(demo_export):
    result = runner.invoke(app, ["inspect", str(demo_export.path), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert [s["name"] for s in manifest["states"]] == ["lstm_h", "lstm_c", "gru_h"]
    assert {s["name"] for s in manifest["signatures"]} == {"serving_default", "stream", "step", "initial_state"}
    table = runner.invoke(app, ["inspect", str(demo_export.path)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "lstm_c" in table.output and "stream" in table.output
