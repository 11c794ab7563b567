"""exporter.cli.report and the CLI's printing: every table reads whole at 80 columns, and uses more when there is more."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from exporter.artifact.specs import CheckResult
from exporter.cli import export as export_commands
from exporter.cli import render as cli_render
from exporter.cli.app import app
from exporter.cli.report import FOLD_SIGNATURE, ChecksView, TimingsLine, compact, fold, tolerance_text, where
from tests import REPO_ROOT
from tests.render import assert_fits, assert_whole, render

ROOT = REPO_ROOT
LOOKUP = ("LookupError: No gradient defined for operation 'IdentityN' (op type: IdentityN). In general every "
          "operation must have an associated `@tf.RegisterGradient` for correct autodiff; save with "
          "tf.saved_model.SaveOptions(experimental_custom_gradients=True)")


def _row(check="gradients", signature="serving_default", tensor="d/lstm/lstm_cell/recurrent_kernel", passed=True,
         max_abs=1.5e-7, max_rel=3.25e-6, atol=1e-4, rtol=1e-3, message=""):
    return CheckResult(check=check, signature=signature, tensor=tensor, passed=passed, max_abs=max_abs,
                       max_rel=max_rel, atol=atol, rtol=rtol, message=message)


def _shown_cells(view: ChecksView) -> list[str]:
    """The text of every cell the folded table shows (numbers in their compact form)."""
    cells = []
    for row in view.rows:
        c = row.check
        cells += [c.check, where(c), str(row.count), compact(c.max_abs), compact(c.max_rel)]
    return cells


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_compact_numbers():
    assert [compact(v) for v in (None, 0.0, 9.54e-07, 1.0, 1234.5, 2.5e-12)] == \
        ["-", "0", "9.5e-7", "1e+0", "1.2e+3", "2.5e-12"]
    assert tolerance_text(1e-5, 1e-4) == "1e-5 / 1e-4" and tolerance_text(0.0, 0.0) == "exact"
    assert tolerance_text(2.5e-3, 0.0) == "2.5e-3 / 0" and tolerance_text(None, None) == "-"


def test_demo_verification_table_reads_whole_at_80_columns(demo_export):
    view = ChecksView(demo_export.report.checks, title="verification (fresh process) of demo")
    text = render(view, width=80)
    print(text)
    assert_fits(text, 80)
    assert_whole(text, *_shown_cells(view))
    assert "signature / tensor" in text  # the merged column at 80
    assert len(view.rows) == len({c.check for c in demo_export.report.checks})  # folded per check
    tolerances = {tolerance_text(c.atol, c.rtol).replace(" ", "") for c in demo_export.report.checks}
    assert all(t in text for t in tolerances - {"-"})  # in the footer, as no column holds them
    assert "atol / rtol" not in text
    # 12 checks since the demo's LSTM and GRU run fused (fused and fused gradients rows) and every input is
    # checked (inputs); the worst higher-order row names a weight (penalty d/<weight>), on two lines: ~22 lines.
    assert len(text.splitlines()) <= 23, "the folded table with its footer and notes fits a screen"


def test_demo_verification_table_uses_a_wider_terminal(demo_export):
    view = ChecksView(demo_export.report.checks, title="verification")
    text = render(view, width=120)
    print(text)
    assert_fits(text, 120)
    header = text.splitlines()[1].split()
    assert header[:3] == ["check", "signature", "tensor"] and "rtol" in header  # split columns, tolerance column
    assert not any(line.startswith("tolerance") for line in text.splitlines())
    for row in view.rows:  # every folded row on one line at 120
        line = next(line for line in text.splitlines() if line.startswith(row.check.check + "  "))
        assert row.check.tensor in line and compact(row.check.max_abs) in line


def test_every_row_at_80_columns(demo_export):
    view = ChecksView(demo_export.report.checks, title="all rows", all_rows=True)
    text = render(view, width=80)
    assert_fits(text, 80)
    assert_whole(text, *_shown_cells(view))
    assert len(view.rows) == len(demo_export.report.checks)


def test_failures_stay_rows_and_their_messages_go_below_the_table():
    checks = (
        _row(check="weights", signature="-", tensor="lstm/lstm_cell/kernel", atol=0.0, rtol=0.0, max_abs=0.0,
             max_rel=0.0),
        *(_row(tensor=t, passed=False, max_abs=None, max_rel=None, message=f"{LOOKUP} [{t}]")
          for t in ("d/inputs", "d/lstm_h", "d/gru/gru_cell/recurrent_kernel")),
        _row(check="higher order", tensor="Hv/inputs", max_abs=None, max_rel=None,
             message="not supported by TF: Tried to take gradients (or similar) of a variable without handle data"),
    )
    for width in (80, 120, 200):
        text = render(ChecksView(checks, title="verification"), width=width)
        print(text)
        assert_fits(text, width)
        assert text.count("FAIL") == 3, "failures are never folded"
        flat = _flat(text)
        for check in checks:
            assert _flat(check.message) in flat  # whole, below the table (or in the row when it fits)
        assert_whole(text, "lstm/lstm_cell/kernel", "d/gru/gru_cell/recurrent_kernel", "Hv/inputs")
    text = render(ChecksView(checks, title="verification"), width=80)
    assert "FAIL [1]" in text and "[1] LookupError" in text


def test_tolerance_column_when_one_check_has_two_tolerances():
    checks = (_row(tensor="a", atol=1e-4, rtol=1e-3), _row(tensor="b", signature="step", atol=1e-2, rtol=1e-2))
    view = ChecksView(checks, title="t", fold_by=FOLD_SIGNATURE)
    text = render(view, width=80)
    assert_fits(text, 80)
    assert "1e-4 / 1e-3" in text and "1e-2 / 1e-2" in text
    assert not any(line.startswith("tolerance") for line in text.splitlines())
    same = render(ChecksView((_row(tensor="a"), _row(check="chunked", tensor="b")), title="t"), width=60)
    assert "tolerance (abs/rel) of every row: 1e-4/1e-3" in same


def test_fold_keeps_the_worst_and_counts():
    rows = (_row(tensor="a", max_abs=1e-7), _row(tensor="b", max_abs=3e-6), _row(signature="step", tensor="c"),
            _row(tensor="d", passed=False, message="x"))
    folded = fold(rows)
    assert [(r.check.tensor, r.count) for r in folded] == [("b", 3), ("d", 1)]
    assert [(r.check.tensor, r.count) for r in fold(rows, FOLD_SIGNATURE)] == [("b", 2), ("c", 1), ("d", 1)]
    assert where(rows[0]) == "serving_default / a" and where(_row(signature="-", tensor="w")) == "w"
    assert where(_row(signature="models.config", tensor="-")) == "models.config"


def test_timings_line_is_one_line_of_whatever_keys_it_holds(demo_export):
    timings = demo_export.report.timings
    assert timings, "the verifier reports per-check timings"
    for width in (60, 80, 120, 400):
        text = render(TimingsLine(timings), width=width)
        assert len(text.splitlines()) == 1 and len(text.rstrip("\n")) <= width, text
        assert_fits(text, width)
    full = TimingsLine(timings).line(10_000)
    # Tenths below 100 s, whole seconds from there (a check slowed down by a loaded machine).
    assert full == "timings (s): " + ", ".join(f"{k} {v:.0f}" if v >= 100 else f"{k} {v:.1f}"
                                               for k, v in timings.items())
    many = {f"check number {i}": float(i) for i in range(20)}
    line = TimingsLine(many).line(80)
    assert len(line) <= 80 and "more" in line
    shown = [part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", ")]
    assert sum(float(v) for _, v in shown) == pytest.approx(sum(many.values()), abs=0.05 * len(shown))
    names = [name for name, _ in shown[:-1]]
    assert names == sorted(names, key=list(many).index), "in the dict's order"
    assert render(TimingsLine({}), width=80) == ""


@pytest.fixture()
def captured(monkeypatch):
    """The CLI's stdout console writing into a buffer at 80 columns, as a pipe gets it."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None, force_terminal=False)
    for module in (cli_render, export_commands):
        monkeypatch.setattr(module, "stdout", console)
    return buffer


def test_demo_summary_fits_one_screen(demo_export, tmp_path, captured, monkeypatch):
    from serving.serving_files import write_serving_config
    from tests.serving.export_copies import make_base

    monkeypatch.chdir(tmp_path)  # relative paths, as the demo's (demo-out/models)
    base = make_base(tmp_path, demo_export.path, versions={1: True}).relative_to(tmp_path)
    result = dataclasses.replace(demo_export, path=Path(os.path.relpath(demo_export.path, tmp_path)))
    files = write_serving_config(base, ["demo"])
    cli_render.print_checks(result.report.checks, all_rows=False,
                      title=f"verification (fresh process) of demo: {result.report.summary()}")
    export_commands.print_export_summary(result, name="demo", base=base, serving_files=files)
    text = captured.getvalue()
    print(text)
    assert_fits(text, 80)
    lines = text.splitlines()
    # The demo's LSTM and GRU now run fused: two more folded rows (fused, fused gradients) than
    # when this bound was 23, and one for the inputs check, the higher-order row on two lines.
    assert len(lines) <= 27, "about one 80x24 screen"
    assert lines[0].startswith(f"verification (fresh process) of demo: all {len(demo_export.report.checks)} checks "
                               "passed")
    timings = [line for line in lines if line.startswith("timings (s): ")]
    assert len(timings) == 1
    published = next(i for i, line in enumerate(lines) if line.startswith("published demo version"))
    assert lines.index(timings[0]) == published - 1 and f"at {result.path} in " in lines[published]
    serving = "\n".join(lines[published + 1:])
    assert serving.startswith("wrote ") and _flat(serving).endswith(f"into {base}")
    assert_whole(serving.replace(",", " "), *(path.name for path in files.files.values()))
    assert f"({len(files.notes)} notes)" in serving and files.notes


def test_inspect_shows_options_as_name_value_rows(demo_export):
    result = CliRunner().invoke(app, ["inspect", str(demo_export.path)])
    assert result.exit_code == 0, result.output
    print(result.output)
    assert_fits(result.output, 80)
    lines = result.output.splitlines()
    for key in demo_export.manifest.options.to_json():
        assert any(line.split()[:2] == [key, "="] for line in lines if line.strip()), key
    for sig in demo_export.manifest.signatures:
        assert_whole(result.output, sig.name, *(t.name for t in sig.inputs + sig.outputs))
    for state in demo_export.manifest.states:
        assert_whole(result.output, state.name, state.layer)


def test_inspect_lists_several_outputs_by_name(several_output_exports):
    result = CliRunner().invoke(app, ["inspect", str(several_output_exports["dict_of_outputs"].path)])
    assert result.exit_code == 0, result.output
    assert_fits(result.output, 80)
    assert "scores, summary (last step)" in " ".join(result.output.split())


def test_inspect_lists_static_inputs(static_input_exports):
    result = CliRunner().invoke(app, ["inspect", str(static_input_exports["static_initial_state"].path)])
    assert result.exit_code == 0, result.output
    assert_fits(result.output, 80)
    assert "context [3] float32" in " ".join(result.output.split())


def test_inspect_lists_sequence_inputs(sequence_input_exports):
    path = sequence_input_exports["tokens_features_and_static_into_gru"].path
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert_fits(result.output, 80)
    text = " ".join(result.output.split())
    assert "features [3] float32" in text and "speaker [2] float32" in text


def _piped(*args) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TERM")}
    seqexport = Path(sys.executable).with_name("seqexport")  # the installed command, its stdout a pipe
    proc = subprocess.run([str(seqexport), *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_piped_output_keeps_80_columns_and_has_no_control_characters(demo_export, tmp_path):
    from tests.serving.export_copies import make_base

    base = make_base(tmp_path, demo_export.path, versions={1: True})
    inspected = _piped("inspect", str(base / "demo" / "1"))
    configured = _piped("serving-config", str(base), "--name", "demo")
    for text in (inspected, configured):
        print(text)
        assert_fits(text, 80)
    assert max(len(line.rstrip()) for line in inspected.splitlines()) > 60, "laid out for 80, not narrower"
    as_json = json.loads(_piped("inspect", str(base / "demo" / "1"), "--json"))
    assert as_json["name"] == "demo"
    assert as_json["options"] == json.loads(json.dumps(demo_export.manifest.options.to_json()))


def test_serving_config_output_at_80_columns(demo_export, tmp_path, monkeypatch):
    from tests.serving.export_copies import make_base

    monkeypatch.chdir(tmp_path)
    base = make_base(tmp_path, demo_export.path, versions={1: True}).relative_to(tmp_path)
    result = CliRunner().invoke(app, ["serving-config", str(base), "--name", "demo"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    print(result.stdout)
    assert_fits(result.stdout, 80)
    assert_whole(result.stdout, f"docker compose -f {base / 'docker-compose.yml'} up",
                 f"kubectl apply -f {base / 'kubernetes.yaml'}", "max_batch_size", "seqexport-serving.json")
    names = [line.split(" = ")[0].strip() for line in result.stdout.splitlines()[1:] if " = " in line]
    assert names == ["model demo", "batching", "wrote", "start with docker", "or kubectl"]


def test_bench_tables_at_80_columns():
    from exporter.cli.bench import bench_tables

    variants = ("keras", "exported", "exported_xla", "tf_step_loop", "numpy_floor", "litert_step_loop",
                "ort_step_loop", "keras_grad", "exported_grad")
    rows = [{"model": model, "kind": "gradient" if v.endswith("grad") else "forward", "batch": batch, "steps": steps,
             "variant": v, "us_per_step": 12345.678 / (i + 1), "throughput_steps_per_s": 1234567.0 / (i + 1),
             "ratio_vs_keras": 1.0 / (i + 1), "matches_keras": None if v == "numpy_floor" else True}
            for model in ("lstm", "srnn") for batch in (1, 32) for steps in (16, 1024) for i, v in enumerate(variants)]
    memory = [{"model": "lstm", "variant": v, "batch": 32, "steps": 1024, "peak_mb_over_baseline": 357.2}
              for v in ("keras", "exported", "keras_grad", "exported_grad")]
    targets = [{"model": "srnn", "batch": 32, "steps": 1024, "target": "fastest forward / floor", "measured": 4.354,
                "limit": 1.5, "holds": False},
               {"model": "lstm", "batch": 32, "steps": 1024, "target": "exported_stream / keras", "measured": 0.4,
                "limit": 0.5, "holds": True}]
    text = render(*bench_tables({"timings": rows, "memory": memory, "targets": targets}), width=80)
    print(text)
    assert_fits(text, 80)
    assert_whole(text, *variants, "12345.7", "1234567", "0.11", "357", "targets: 1 of 2 hold",
                 "fastest forward / floor", "4.354")
    # title, header, rule per table: no wrapped row
    assert len(text.splitlines()) == len(rows) + len(targets) + len(memory) + 9


def test_user_facing_tables_import_no_tensorflow():
    code = ("import sys\nimport exporter.cli.report, exporter.cli.bench, exporter.cli.stress\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
