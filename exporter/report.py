"""Rich tables for what the CLI shows: verification rows and an export's manifest."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from exporter.specs import CheckResult, Manifest


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _grouped(checks: tuple[CheckResult, ...]) -> list[tuple[CheckResult, int]]:
    """Passing rows folded per (check, signature) into the worst one; failures stay apart."""
    groups: dict[tuple[str, str], list[CheckResult]] = {}
    rows: list[tuple[CheckResult, int]] = []
    for check in checks:
        if check.passed:
            groups.setdefault((check.check, check.signature), []).append(check)
        else:
            rows.append((check, 1))
    for members in groups.values():
        worst = max(members, key=lambda c: (c.max_abs or 0.0))
        rows.append((worst, len(members)))
    order = {c: i for i, c in enumerate(checks)}
    return sorted(rows, key=lambda row: order[row[0]])


def checks_table(checks: tuple[CheckResult, ...], *, title: str, all_rows: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("check", "signature", "tensor", "rows", "max abs", "max rel", "atol/rtol", "result"):
        table.add_column(column, justify="right" if column in ("rows", "max abs", "max rel") else "left")
    rows = [(c, 1) for c in checks] if all_rows else _grouped(checks)
    for check, count in rows:
        tolerance = "-" if check.atol is None else f"{check.atol:.0e}/{check.rtol:.0e}"
        result = "[green]pass[/]" if check.passed else f"[bold red]FAIL[/] {escape(check.message)}"
        if check.passed and check.message and (check.max_abs is None or check.check == "batch independence"):
            result = f"[green]pass[/] {escape(check.message)}"
        table.add_row(escape(check.check), escape(check.signature), escape(check.tensor), str(count),
                      _num(check.max_abs), _num(check.max_rel), tolerance, result)
    return table


def manifest_tables(manifest: Manifest) -> list[Table]:
    signatures = Table(title=f"{manifest.name}: signatures", title_justify="left")
    for column in ("signature", "inputs", "outputs"):
        signatures.add_column(column)
    for sig in manifest.signatures:
        describe = lambda ts: "\n".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in ts)  # noqa: E731
        signatures.add_row(sig.name, describe(sig.inputs), describe(sig.outputs))
    states = Table(title="states (input and output keys of stream/step)", title_justify="left")
    for column in ("name", "layer", "index", "shape", "dtype"):
        states.add_column(column)
    for state in manifest.states:
        states.add_row(state.name, state.layer, str(state.index), str(list(state.shape)), state.dtype)
    info = Table(title="export", title_justify="left", show_header=False)
    info.add_column("key")
    info.add_column("value")
    source = manifest.source
    info.add_row("source", f"{source.get('description', '')} ({source.get('kind')})")
    info.add_row("masked (takes lengths)", str(manifest.masked))
    info.add_row("serving_default returns last step only", str(manifest.last_step_only))
    info.add_row("options", ", ".join(f"{k}={v}" for k, v in manifest.options.to_json().items()))
    info.add_row("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items()))
    if manifest.batch_independent is not None:
        info.add_row("batch independent (server-side batching)",
                     f"{manifest.batch_independent} (largest off-diagonal |J| {manifest.batch_offdiag_max:.2e})")
    passed = sum(c.passed for c in manifest.checks)
    info.add_row("last checks", f"{passed}/{len(manifest.checks)} passed")
    return [info, signatures, states]
