"""What the CLI shows, laid out to be read whole in an 80-column terminal (and wider when there is room).

Every renderable here measures the width it is given (rich's `ConsoleOptions.max_width`):
a table that fits is shown as it is; otherwise it narrows (one merged "where" column,
tolerances below the table, long messages as numbered notes) and its cells wrap at
spaces, never cut (`overflow="fold"`), so no name or number is lost to an ellipsis.
Piped output gets the same layout at rich's 80 columns, without colours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from exporter.artifact.specs import CheckResult, Manifest

# Folding keys: the verification table folds passing rows per check, conversion and
# readiness tables per check and signature (their checks are whole runtimes).
FOLD_CHECK = ("check",)
FOLD_SIGNATURE = ("check", "signature")
NO_SIGNATURE = ("", "-")


def compact(value: float | None, digits: int = 2) -> str:
    """A number in at most ~7 characters: `0`, `9.5e-7`, `1.2e+3`; `-` for None."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}" if int(exponent) < 0 else f"{mantissa}e+{int(exponent)}"


def tolerance_text(atol: float | None, rtol: float | None) -> str:
    """`1e-5 / 1e-4`, `exact` when both are zero, `-` when the row has none."""
    if atol is None and rtol is None:
        return "-"
    if not atol and not rtol:
        return "exact"
    return f"{compact(atol, 3)} / {compact(rtol, 3)}"


def seconds_text(seconds: float) -> str:
    return f"{_seconds(seconds)} s"


def table(*, title: str | None = None, show_header: bool = True) -> Table:
    """The one table style: a rule under the header, no side borders (width goes to the cells)."""
    return Table(title=title, title_justify="left", show_header=show_header, box=box.SIMPLE_HEAD,
                 show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)


def add_columns(target: Table, names: Iterable[str], *, right: Iterable[str] = (), no_wrap: Iterable[str] = ()) -> None:
    right, no_wrap = set(right), set(no_wrap)
    for name in names:
        target.add_column(name, justify="right" if name in right else "left", overflow="fold",
                          no_wrap=name in no_wrap)


def fits(console: Console, options: ConsoleOptions, renderable) -> bool:
    """Whether `renderable` needs no wrapping at the width it is given."""
    unbounded = options.update_width(1_000_000)
    return Measurement.get(console, unbounded, renderable).maximum <= options.max_width


@dataclasses.dataclass(frozen=True)
class _Row:
    check: CheckResult
    count: int


def fold(checks: tuple[CheckResult, ...], by: tuple[str, ...] = FOLD_CHECK) -> list[_Row]:
    """Passing rows folded per `by` into the worst (largest max abs) one; failures stay apart."""
    groups: dict[tuple, list[CheckResult]] = {}
    rows: list[_Row] = []
    for check in checks:
        if check.passed or check.not_applicable:
            groups.setdefault(tuple(getattr(check, key) for key in by), []).append(check)
        else:
            rows.append(_Row(check, 1))
    for members in groups.values():
        rows.append(_Row(max(members, key=lambda c: c.max_abs or 0.0), len(members)))
    order = {id(c): i for i, c in enumerate(checks)}
    return sorted(rows, key=lambda row: order[id(row.check)])


def where(check: CheckResult) -> str:
    """`signature / tensor`, or the tensor alone for rows of no signature (weights)."""
    parts = [part for part in (check.signature, check.tensor) if part not in NO_SIGNATURE]
    return " / ".join(parts) or "-"


def _shows_message(check: CheckResult) -> bool:
    """Failures always say why; a passing row only when it has no numbers or is a property."""
    return bool(check.message) and (not check.passed or check.max_abs is None
                                    or check.check == "batch independence") and not check.not_applicable


def _fold_gradient_checks(checks: list[str], every_gradient: set[str]) -> list[str]:
    """`gradients, source gradients, chunked gradients` -> `every gradient check`, when the group holds them all."""
    grads = [c for c in checks if c in every_gradient]
    if len(grads) < 2 or set(grads) != every_gradient:
        return checks
    return ["every gradient check", *(c for c in checks if c not in every_gradient)]


class ChecksView:
    """The verification (or parity, or readiness) table of `CheckResult` rows.

    Widest layout that fits the width: separate signature and tensor columns, a
    tolerance column and messages in the result column; then the same with messages
    as numbered notes below; then one merged `signature / tensor` column with the
    tolerances in a footer (each tolerance with the checks it applies to) when each
    check has one tolerance. Failed rows are never folded.
    """

    def __init__(self, checks: Iterable[CheckResult], *, title: str, all_rows: bool = False,
                 fold_by: tuple[str, ...] = FOLD_CHECK):
        self.checks = tuple(checks)
        self.title = title
        self.rows = [_Row(c, 1) for c in self.checks] if all_rows else fold(self.checks, fold_by)

    def _notes(self) -> dict[str, int]:
        notes: dict[str, int] = {}
        for row in self.rows:
            if _shows_message(row.check):
                notes.setdefault(row.check.message, len(notes) + 1)
        return notes

    def _tolerances_by_check(self) -> dict[str, str] | None:
        """{check: tolerance} when every row of a check has the same tolerance, else None."""
        found: dict[str, set[str]] = {}
        for row in self.rows:
            found.setdefault(row.check.check, set()).add(tolerance_text(row.check.atol, row.check.rtol))
        if any(len(values) > 1 for values in found.values()):
            return None
        return {check: values.pop() for check, values in found.items()}

    def _result(self, check: CheckResult, notes: dict[str, int] | None) -> str:
        if check.not_applicable:
            return "n/a"  # the note below the table says why, once for all such rows
        result = "[green]pass[/]" if check.passed else "[bold red]FAIL[/]"
        if _shows_message(check):
            result += f" {escape(check.message)}" if notes is None else f" {escape(f'[{notes[check.message]}]')}"
        return result

    def _table(self, *, split: bool, tolerance_column: bool, notes: dict[str, int] | None) -> Table:
        out = table(title=escape(self.title))
        place = ["signature", "tensor"] if split else ["signature / tensor"]
        columns = ["check", *place, "rows", "max abs", "max rel", *(["atol / rtol"] if tolerance_column else []),
                   "result"]
        add_columns(out, columns, right=("rows", "max abs", "max rel"),
                    no_wrap=("rows", "max abs", "max rel", "atol / rtol"))
        for row in self.rows:
            c = row.check
            cells = [c.check, *((c.signature, c.tensor) if split else (where(c),)), str(row.count),
                     compact(c.max_abs), compact(c.max_rel)]
            if tolerance_column:
                cells.append(tolerance_text(c.atol, c.rtol))
            out.add_row(*map(escape, cells), self._result(c, notes))
        return out

    def _notes_text(self, notes: dict[str, int]) -> list[Text]:
        return [Text(f"[{number}] {message}", style="dim" if all(r.check.passed for r in self.rows
                                                                  if r.check.message == message) else "")
                for message, number in notes.items()]

    def _footer(self, tolerances: dict[str, str]) -> list[Text]:
        by_value: dict[str, list[str]] = {}
        for check, value in tolerances.items():
            if value != "-":  # rows that compare no numbers have no tolerance
                by_value.setdefault(value.replace(" ", ""), []).append(check)
        if not by_value:
            return []
        if len(by_value) == 1 and "-" not in tolerances.values():
            return [Text(f"tolerance (abs/rel) of every row: {next(iter(by_value))}")]
        # abs/rel, as --atol/--rtol; "tolerance:" alone keeps the demo's footer to two lines at 80.
        every_gradient = {c for c in tolerances if c.endswith("gradients")}
        return [Text("tolerance: " + "; ".join(f"{', '.join(_fold_gradient_checks(checks, every_gradient))} {value}"
                                                        for value, checks in by_value.items()))]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self._layout(console, options)
        # Checks that do not apply (a whole-sequence export's streaming checks): why, once each.
        for message in dict.fromkeys(r.check.message for r in self.rows if r.check.not_applicable):
            yield Text(f"n/a: {message.removeprefix('not applicable: ')}")

    def _layout(self, console: Console, options: ConsoleOptions) -> RenderResult:
        notes = self._notes()
        inline = self._table(split=True, tolerance_column=True, notes=None)
        if fits(console, options, inline):
            yield inline
            return
        split = self._table(split=True, tolerance_column=True, notes=notes)
        if fits(console, options, split):
            yield split
            yield from self._notes_text(notes)
            return
        tolerances = self._tolerances_by_check()
        narrow = self._table(split=False, tolerance_column=tolerances is None, notes=notes)
        # A path is one long word: its column never gets narrower than the longest one, so
        # it wraps at the " / " and never inside a name.
        narrow.columns[1].min_width = min(options.max_width // 2, max(
            (len(w) for r in self.rows for w in where(r.check).split()), default=1))
        if not fits(console, options, narrow):
            # Check names are words: let them wrap first, so the signature / tensor paths
            # (long words of their own) keep more of the width.
            narrow.columns[0].max_width = max((len(w) for r in self.rows for w in r.check.check.split()), default=1)
        yield narrow
        if tolerances is not None:
            yield from self._footer(tolerances)
        yield from self._notes_text(notes)


class TimingsLine:
    """`label (s): name 1.2, name 3.4, ...` on ONE line, in the dict's order.

    The entries are whatever keys `timings` holds (seconds); when they do not fit the
    width, the shortest are summed into `N more 0.3` until the line fits.
    """

    def __init__(self, timings: Mapping[str, float], *, label: str = "timings"):
        self.timings = dict(timings)
        self.label = label

    def line(self, width: int) -> str:
        kept = list(self.timings)
        while True:
            dropped = [k for k in self.timings if k not in kept]
            parts = [f"{k} {_seconds(self.timings[k])}" for k in kept]
            if dropped:
                parts.append(f"{len(dropped)} more {_seconds(sum(self.timings[k] for k in dropped))}")
            text = f"{self.label} (s): " + ", ".join(parts)
            if len(text) <= width or not kept:
                return text
            kept.remove(min(kept, key=lambda k: self.timings[k]))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.timings:
            yield Text(self.line(options.max_width), no_wrap=True, overflow="fold")


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 100 else f"{seconds:.1f}"


def key_values(rows: Iterable[tuple[str, str]], *, title: str | None = None) -> Table:
    """A two-column table without header: `name = value` per line (values wrap at spaces)."""
    out = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False, padding=(0, 1),
                collapse_padding=True)
    out.add_column("name", overflow="fold")
    out.add_column("=", width=1)
    out.add_column("value", overflow="fold")
    for name, value in rows:
        out.add_row(escape(name), "=", escape(value))
    return out


def _value_text(value) -> str:
    if isinstance(value, dict) and set(value) == {"atol", "rtol"}:
        return f"atol {compact(value['atol'], 3)}, rtol {compact(value['rtol'], 3)}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _shape(shape) -> str:
    return "[" + ",".join("None" if d is None else str(d) for d in shape) + "]"


def manifest_tables(manifest: Manifest) -> list:
    """`inspect`: the export's facts, its options as `name = value` rows, signatures and states."""
    source = manifest.source
    facts = [
        ("source", f"{source.get('description', '')} ({source.get('kind')})"),
        ("masked (takes lengths)", str(manifest.masked)),
        ("last step only", str(manifest.last_step_only)),
    ]
    if manifest.outputs:
        facts.append(("outputs (by name)", ", ".join(
            f"{o.name}{' (last step)' if o.last_step else ''}" for o in manifest.outputs)))
    if manifest.static_inputs:
        facts.append(("static inputs (every call)", ", ".join(
            f"{i.name} {list(i.shape)} {i.dtype}" for i in manifest.static_inputs)))
    if manifest.sequence_inputs:
        facts.append(("sequence inputs (per step)", ", ".join(
            f"{i.name} {list(i.shape)} {i.dtype}{' (a mask)' if i.mask else ''}" for i in manifest.sequence_inputs)))
    if manifest.context_inputs:
        facts.append(("context inputs (initial_state)", ", ".join(
            f"{i.name} [{', '.join(map(str, ['S' if i.steps < 0 else i.steps, *i.shape]))}] {i.dtype}"
            for i in manifest.context_inputs) + ": encoded once, the decoder streams"))
    if manifest.max_length is not None:
        cache = manifest.cache_bytes()
        facts.append(("key/value cache", f"max_length {manifest.max_length}: {cache:,} bytes per sequence "
                                         f"({cache / 2**20:.2f} MiB); streaming past {manifest.max_length} positions "
                                         "fails"))
    if not manifest.streams:
        facts.append(("whole sequence only", f"serving_default only, no streaming: {manifest.whole_sequence}"))
    if manifest.vocabularies:
        facts.append(("vocabulary (assets)", ", ".join(
            f"assets/{v.file} ({v.words:,} words, {v.layer!r})" for v in manifest.vocabularies)))
    if manifest.fixed_steps is not None:
        facts.append(("fixed length (serving_default)", f"{manifest.fixed_steps} steps; stream takes any chunk"))
    if manifest.generate is not None:
        spec = manifest.generate
        fed = (f"the chosen id ({spec.scores.value} over {spec.vocab} ids)" if spec.vocab is not None
               else "the output's features")
        facts.append(("generate", f"feeds back {fed}; max_new_tokens <= {spec.max_new_tokens}; {spec.source}"))
    else:
        facts.append(("generate", "not exported"))
    if manifest.batch_independent is not None:
        facts.append(("batch independent", f"{manifest.batch_independent} (largest off-diagonal |J| "
                                           f"{compact(manifest.batch_offdiag_max)})"))
    passed = sum(c.passed for c in manifest.checks)
    facts.append(("last checks", f"{passed}/{len(manifest.checks)} passed"))
    facts.append(("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items())))
    info = key_values(facts, title=f"{manifest.name}: export")
    options = key_values(((k, _value_text(v)) for k, v in manifest.options.to_json().items()), title="options")

    signatures = table(title="signatures")
    add_columns(signatures, ("signature", "inputs", "outputs"))
    describe = lambda ts: "\n".join(f"{t.name} {t.dtype}{_shape(t.shape)}" for t in ts)  # noqa: E731
    for sig in manifest.signatures:
        signatures.add_row(escape(sig.name), escape(describe(sig.inputs)), escape(describe(sig.outputs)))
    states = table(title="states (keys of stream and step)")
    add_columns(states, ("name", "layer", "index", "shape", "dtype"), right=("index",))
    for state in manifest.states:
        states.add_row(*map(escape, (state.name, state.layer, str(state.index), _shape(state.shape), state.dtype)))
    return [info, options, signatures, states]

