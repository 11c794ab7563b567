"""Names and functions shared by the runtime-conversion tests."""

from __future__ import annotations

# SimpleRNN, GRU (reset_after True and False), LSTM, stacked, masked (+ masked with last step only).
KINDS = ("simple_rnn", "gru_reset_after", "gru_reset_before", "lstm", "stacked_functional", "masking",
         "masking_last_step")


def describe(report) -> str:
    """One line per target: the worst row and its tolerance, for the test log."""
    worst = max(report.checks, key=lambda c: -1.0 if c.max_abs is None else c.max_abs)
    return (f"{report.target} {report.export_dir}: {report.summary()}; worst {worst.signature} {worst.tensor} "
            f"max abs {worst.max_abs} (atol {worst.atol}, rtol {worst.rtol})")
