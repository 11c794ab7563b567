"""`scripts/stress.py --small` against `seqexport serve`: the properties it asserts, and the checks failing when they must."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import REPO_ROOT

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def small_run(serving_base):
    """One small run of the script (8 sessions x 20 chunks, 10% bad requests), its JSON report."""
    before = sorted(str(p) for p in serving_base.rglob("*"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "stress.py"), str(serving_base), "--name", "demo",
                             "--small", "--json"], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert sorted(str(p) for p in serving_base.rglob("*")) == before, "the served base must be left as it was"
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return json.loads(result.stdout)


def test_small_run_has_no_wrong_or_dropped_result(small_run):
    report = small_run
    print(json.dumps({k: report[k] for k in ("requests", "good", "bad", "requests_per_s", "latency_ms", "bad_answers",
                                            "rss_mb", "publish", "checks")}, indent=1))
    assert report["passed"] is True and report["completed"] is True
    assert report["sessions"] >= 8 + report["config"]["late_sessions"]
    assert report["wrong_sessions"] == 0 and report["dropped"] == 0 and report["unexpected_answers"] == 0
    assert report["good"] == report["sessions"] * 20 and report["bad"] > 0
    assert report["max_abs_error"] <= report["tolerance"]["atol"]
    # the version published mid-run is served, and sessions started after it ran on it
    assert report["publish"]["version"] == 2 and report["publish"]["picked_up_s"] is not None
    assert report["sessions_by_version"].get("2", 0) >= report["config"]["late_sessions"]
    assert report["stale_sessions"] == 0


def test_small_run_reports_its_figures(small_run):
    report = small_run
    assert report["requests"] == report["good"] + report["bad"] + report["metadata"]
    assert report["requests_per_s"] > 0
    for transport in ("all", "grpc", "rest"):
        assert report["latency_ms"][transport]["n"] > 0
        assert 0 < report["latency_ms"][transport]["p50"] <= report["latency_ms"][transport]["p99"]
    assert sum(report["bad_answers"].values()) == report["bad"]
    assert all(code.split(" ", 1)[0] in ("grpc", "rest") for code in report["bad_answers"])
    assert all(expected == answer for _, expected, answer, _ in report["bad_by_kind"])
    assert report["rss_mb"]["start"] > 0 and report["rss_mb"]["baseline"] > 0 and report["rss_mb"]["end"] > 0
    assert report["memory_growth_mb"] is None and report["checks"]["memory within budget"] is None


def test_session_check_fails_on_a_wrong_result():
    """The comparison a session passes: exact and rounding-sized differences pass, a real one fails."""
    from exporter.artifact.specs import Tolerance
    from exporter.tools.stress import session_checks
    from serving.signatures import SequenceKeys

    keys = SequenceKeys(sequence="inputs", output="outputs", states=("h",), lengths=None, batch_size="batch_size")
    rng = np.random.default_rng(0)
    want = {"outputs": rng.normal(size=(1, 80, 2)).astype(np.float32), "h": rng.normal(size=(1, 4)).astype(np.float32)}
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)
    same = session_checks("s", keys, want["outputs"].copy(), {"h": want["h"].copy()}, want, tolerance)
    assert all(row.passed for row in same)
    nudged = want["outputs"] * (1 + 1e-6)
    assert all(row.passed for row in session_checks("s", keys, nudged, {"h": want["h"]}, want, tolerance))
    broken = want["outputs"].copy()
    broken[0, 41, 1] += 1e-3  # one step of one chunk off
    rows = session_checks("s", keys, broken, {"h": want["h"]}, want, tolerance)
    print(rows[0])
    assert not rows[0].passed and rows[0].worst_index == (0, 41, 1) and rows[0].max_abs == pytest.approx(1e-3, rel=1e-2)
    stale = session_checks("s", keys, want["outputs"], {"h": want["h"] * 0}, want, tolerance)
    assert not stale[1].passed  # a state not carried over


def test_report_reads_whole_at_80_columns(small_run):
    from exporter.artifact.specs import Tolerance
    from exporter.cli.stress import _render
    from exporter.tools.stress import StressConfig, StressReport
    from tests.render import assert_fits, assert_whole, render

    fields = {f.name for f in dataclasses.fields(StressReport)}
    data = {k: v for k, v in small_run.items() if k in fields}
    report = StressReport(**data | {"config": StressConfig(**data["config"]), "tolerance": Tolerance(**data["tolerance"]),
                                    "bad_by_kind": tuple(map(tuple, data["bad_by_kind"]))})
    assert json.loads(json.dumps(report.to_json())) == small_run  # the same run, rebuilt
    text = render(*_render(report), width=80)
    print(text)
    assert_fits(text, 80)
    assert_whole(text, *(kind for kind, *_ in report.bad_by_kind), *report.bad_answers, *report.checks())
    assert all(str(report.rss_mb[k]) in text for k in ("start", "end"))


def test_report_fails_when_a_property_does_not_hold():
    from exporter.artifact.specs import Tolerance
    from exporter.tools.stress import StressConfig, StressReport

    good = StressReport(
        config=StressConfig(), seconds=1.0, requests=30_000, good=27_000, bad=2_900, metadata=100,
        latency_ms={}, sessions=100, sessions_by_version={"1": 64, "2": 36}, wrong_sessions=0, max_abs_error=0.0,
        max_rel_error=0.0, tolerance=Tolerance(atol=1e-5, rtol=1e-4), worst="", dropped=0, dropped_examples=(),
        bad_answers={}, bad_by_kind=(), unexpected_answers=0, unexpected_examples=(), rss_mb={},
        memory_growth_mb=12.0, publish={"version": 2, "picked_up_s": 0.5}, stale_sessions=0, completed=True,
    )
    assert good.passed
    for change, check in ((dict(wrong_sessions=1), "zero wrong results"),
                          (dict(dropped=1), "zero dropped good requests"),
                          (dict(unexpected_answers=1), "every bad request got its code"),
                          (dict(memory_growth_mb=50.5), "memory within budget"),
                          (dict(memory_growth_mb=None), "memory within budget"),  # min_requests never reached
                          (dict(publish={"version": 2, "picked_up_s": None}), "new version picked up"),
                          (dict(sessions_by_version={"1": 100}), "new version picked up"),
                          (dict(stale_sessions=1), "new version picked up"),
                          (dict(completed=False), "completed in time")):
        bad = dataclasses.replace(good, **change)
        assert bad.checks()[check] is False and not bad.passed, change


def test_connections_mode_small_run_has_no_reset_or_failure(serving_base):
    """`stress --connections`: REST clients opening a connection per request and gRPC channels at once.

    Counts only: resets, failed requests and wrong results must be 0; times are reported, not judged.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "stress.py"), str(serving_base), "--name", "demo",
                             "--connections", "24", "--min-requests", "600", "--chunks", "5", "--json"],
                            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = json.loads(result.stdout)
    print(json.dumps({k: report[k] for k in ("requests", "transports", "rss_mb", "checks")}, indent=1))
    assert report["resets"] == 0 and report["failures"] == 0 and report["wrong_sessions"] == 0
    assert report["requests"] == 600 and report["sessions"] > 0
    for transport in ("grpc", "rest"):
        row = report["transports"][transport]
        assert row["requests"] > 0 and row["latency_ms"]["n"] == row["requests"]
    assert report["checks"]["memory within budget"] is None  # too short to judge


def test_connections_report_fails_on_a_reset_or_failure():
    from exporter.tools.stress_connections import ConnectionsConfig, ConnectionsReport

    row = {"requests": 10, "resets": 0, "failures": 0, "latency_ms": {}, "per_s": 1.0}
    good = ConnectionsReport(config=ConnectionsConfig(), seconds=1.0, requests=20_000,
                             transports={"grpc": dict(row), "rest": dict(row)}, sessions=10, wrong_sessions=0,
                             max_abs_error=0.0, examples=(), rss_mb={}, memory_growth_mb=10.0, completed=True)
    assert good.passed
    for transport, change, check in (("rest", {"resets": 1}, "zero connection resets"),
                                     ("grpc", {"failures": 2}, "zero failed requests")):
        bad = dataclasses.replace(good, transports={**good.transports, transport: {**row, **change}})
        assert bad.checks()[check] is False and not bad.passed
    assert dataclasses.replace(good, memory_growth_mb=51.0).checks()["memory within budget"] is False
    assert dataclasses.replace(good, wrong_sessions=1).checks()["zero wrong results"] is False
