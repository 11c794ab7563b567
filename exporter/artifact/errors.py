"""The exceptions seqexport raises, and the exit code each maps to.

The CLI catches `SeqExportError` in one place and turns it into a message and an
exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # specs imports nothing from here, but keep the run-time import graph a tree
    from exporter.artifact.specs import VerifyReport

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class SeqExportError(Exception):
    """Base of every error a user can cause or fix."""

    exit_code = EXIT_BAD_INPUT


class BadInput(SeqExportError):
    """The model, path or option given cannot be used (exit 2)."""


class UnsupportedModel(BadInput):
    """The model has a layer that cannot run one step at a time (exit 2)."""


class CannotStream(UnsupportedModel):
    """The model cannot run step by step (a layer mixes time steps, it has no state to carry, ...): it
    gets a whole-sequence export instead, unless streaming was required (`--require-stream`: exit 2).

    Attributes:
        why: the layer and what its probe found, for the report and the manifest.
    """

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


class VerifyFailed(SeqExportError):
    """A check ran and the numbers did not match (exit 1).

    Attributes:
        report: the `VerifyReport` that failed (every row, for the table).
    """

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, report: VerifyReport | None = None):
        super().__init__(message)
        self.report = report


class VerificationIncomplete(SeqExportError):
    """A check could not complete: the verifier ran past its limit or crashed (exit 1).

    Not bad input: the export may be fine, but it was not proven so, and nothing is published.
    """

    exit_code = EXIT_CHECK_FAILED


class ConversionFailed(SeqExportError):
    """A runtime (LiteRT, ONNX Runtime) could not take a converted export (exit 1).

    The TF export stays valid; the message names the signature and the op.
    """

    exit_code = EXIT_CHECK_FAILED


def refuse_extra_inputs(what: str, static_inputs=(), *, sequence_inputs=(), advice: str = "") -> None:
    """Raises the `BadInput` of a consumer that does not take these inputs yet: other sequence
    inputs first, then static inputs. (Every consumer takes several outputs.)

    `advice` is appended to the message (what to do instead, where there is something).
    """
    if sequence_inputs:
        raise BadInput(sequence_inputs_unsupported(what, sequence_inputs) + advice)
    if static_inputs:
        raise BadInput(static_inputs_unsupported(what, static_inputs) + advice)


def refuse_context_inputs(what: str, names, why: str = "") -> None:
    """Raises the `BadInput` of a consumer that does not take an encoder's context inputs yet."""
    raise BadInput(
        f"{what} does not support exports with context inputs yet ({', '.join(names)}: an encoder's inputs, "
        f"which `initial_state` encodes into the decoder's states){why}. Convert it with --to onnx (an "
        "`initial_state` model that encodes beside the step model), or serve the SavedModel (TF Serving, "
        "`seqexport serve`): a client session encodes once (`context=`) and streams the decoder.")


def static_inputs_unsupported(what: str, names) -> str:
    """The message of a `BadInput` where `what` cannot take an export with static inputs yet."""
    names = list(names)
    return (
        f"{what} supports exports with one sequence input; this one also has {len(names)} static input(s) "
        f"({', '.join(names)}). Not supported yet for static inputs: the Triton onnxruntime backend "
        "(`--to triton`), whose implicit state (`sequence_batching.state`) starts from zeros "
        "or a data file, never from a request's input, while this export's states may start from `initial_state` "
        "of the static inputs. The Triton Python backend (`--to triton-python`, `--to triton --backend python`, "
        "`--targets triton-python`) takes them: an input of every request, the state started from "
        "`initial_state` on START. So do the LiteRT and ONNX conversions (`--to tflite`, "
        "`--to onnx`), and the TF export itself takes them in every signature (`serving_default`, "
        "`stream`, `step`, `initial_state`; TF Serving, `seqexport serve`, the streaming session "
        "`serving.session.StreamingSession(..., statics=...)`): use those."
    )


def sequence_inputs_unsupported(what: str, names) -> str:
    """The message of a `BadInput` where `what` cannot take an export with several sequence inputs yet."""
    names = list(names)
    return (
        f"{what} supports exports with one sequence input; this one also has {len(names)} other sequence "
        f"input(s) ({', '.join(names)}), [B, T, ...] beside `inputs`. Not supported yet for several sequence "
        "inputs: the Triton conversions (`--to triton`, `--to triton-python`, `--targets triton-python`). The "
        "LiteRT and ONNX conversions (`--to tflite`, `--to onnx`) take them, and the TF export itself takes "
        "them by name in `serving_default`, `stream` (the same T as `inputs`) and `step` (one step of each; "
        "TF Serving, `seqexport serve`), and so do the streaming session "
        "(`serving.session.StreamingSession.feed(chunk, sequences=...)`) and exporting again from the "
        "SavedModel: use those."
    )
