"""Build the C API runner once per source version, run feeds -> fetches by tensor name.

The program is compiled into a cache directory, never into the package or an
export: `$SEQEXPORT_CACHE_DIR`, else `$XDG_CACHE_HOME/seqexport`, else
`~/.cache/seqexport`. The binary's name carries a hash of the C source, the
TensorFlow version and the compiler, so a changed source is rebuilt and an old
binary is never run against a new library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from exporter.artifact.errors import BadInput, SeqExportError
from exporter.artifact.paths import is_saved_model_dir

SOURCE = Path(__file__).with_name("seqexport_run.c")
CACHE_ENV = "SEQEXPORT_CACHE_DIR"
DEFAULT_TIMEOUT_S = 600.0
BUILD_TIMEOUT_S = 300.0
_REQUEST_MAGIC = b"SEQEXPORT-RUN 1\n"
_RESPONSE_MAGIC = "SEQEXPORT-RESULT 1"
_EXIT_LOAD_FAILED = 3

# TF_DataType numbers (= tensorflow.DataType enum) of the fixed-size types numpy holds.
_DTYPES = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
    9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64,
}
_DTYPE_NUMBERS = {np.dtype(v): k for k, v in _DTYPES.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CapiRun:
    """One `TF_SessionRun`: feeds and fetches by graph tensor name (`op:index`).

    Attributes:
        label: names the run in the answer (no whitespace).
        feeds: tensor name -> array.
        fetches: tensor names to fetch, in order.
    """

    label: str
    feeds: dict[str, np.ndarray]
    fetches: tuple[str, ...]

    def __post_init__(self):
        for text in (self.label, *self.feeds, *self.fetches):
            if not text or any(c.isspace() for c in text):
                raise ValueError(f"labels and tensor names must be non-empty without whitespace. Got: {text!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CapiResult:
    """The answer to one `CapiRun`: outputs by fetched tensor name, or the error TF gave."""

    label: str
    outputs: dict[str, np.ndarray]
    error: str | None
    run_us: int

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CapiAnswer:
    """Every run's result plus what the loader said: TF version and load time."""

    results: tuple[CapiResult, ...]
    tf_version: str
    load_us: int
    build_s: float
    binary: Path


def supported(array) -> bool:
    """Whether the runner can pass this array (fixed-size numeric dtypes only)."""
    return np.asarray(array).dtype in _DTYPE_NUMBERS


def cache_dir() -> Path:
    """Where compiled runners live (created on demand)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "seqexport"
    return Path.home() / ".cache" / "seqexport"


def tensorflow_dir() -> Path:
    """The installed tensorflow package folder, found without importing TensorFlow."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("TensorFlow is not installed: the C API runner links against its shared libraries.")
    return Path(list(spec.submodule_search_locations)[0])


def _library_facts() -> tuple[Path, Path, str]:
    root = tensorflow_dir()
    include = root / "include"
    for needed in (root / "libtensorflow_cc.so.2", root / "libtensorflow_framework.so.2",
                   include / "tensorflow" / "c" / "c_api.h"):
        if not needed.exists():
            raise BadInput(
                f"The tensorflow package at {root} lacks {needed.name}: the C API runner needs the "
                "tensorflow wheel's shared libraries and headers (a full `pip install tensorflow`)."
            )
    try:
        tf_version = version("tensorflow")
    except Exception:  # no package metadata: the library's size and time still tell builds apart
        stat = (root / "libtensorflow_cc.so.2").stat()
        tf_version = f"{stat.st_size}-{int(stat.st_mtime)}"
    return root, include, tf_version


def _check_cache_location(directory: Path) -> Path:
    directory = directory.expanduser().resolve()
    package = Path(__file__).resolve().parents[1]
    if directory == package or package in directory.parents:
        raise BadInput(f"The runner cache {directory} is inside the seqexport package; set {CACHE_ENV} elsewhere.")
    for folder in (directory, *directory.parents):
        if is_saved_model_dir(folder):
            raise BadInput(f"The runner cache {directory} is inside the SavedModel {folder}; set {CACHE_ENV} elsewhere.")
    return directory


def _compiler(compiler: str) -> str:
    path = shutil.which(compiler)
    if path is None:
        raise BadInput(f"`{compiler}` was not found on PATH: the TF Serving check compiles a small C program "
                       "against TensorFlow's C API (install gcc, e.g. `apt-get install gcc`).")
    return path


def binary_path(directory: Path | None = None, *, compiler: str = "gcc") -> Path:
    """Where the runner for the current source, TensorFlow and compiler lives (built or not)."""
    root, _, tf_version = _library_facts()
    gcc = _compiler(compiler)
    key = hashlib.sha256(SOURCE.read_bytes() + f"\0{tf_version}\0{root}\0{gcc}".encode()).hexdigest()[:16]
    return _check_cache_location(directory or cache_dir()) / f"seqexport_run-{key}"


def build(*, directory: Path | None = None, compiler: str = "gcc") -> tuple[Path, float]:
    """Returns (runner binary, seconds spent compiling: 0.0 when cached).

    Raises:
        BadInput: no compiler, no TensorFlow libraries, a cache folder inside the
            package or an export, or the compile failed.
    """
    binary = binary_path(directory, compiler=compiler)
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, 0.0
    root, include, _ = _library_facts()
    gcc = _compiler(compiler)
    directory = binary.parent
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
        partial = Path(tmp) / binary.name
        command = [
            gcc, "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", f"-I{include}", str(SOURCE),
            "-o", str(partial), f"-L{root}", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2",
            f"-Wl,-rpath,{root}",
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BadInput(f"Compiling {SOURCE.name} took over {BUILD_TIMEOUT_S:.0f} s and was stopped.") from None
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
            raise BadInput(f"Compiling {SOURCE.name} failed (exit {proc.returncode}):\n{tail}")
        os.replace(partial, binary)  # atomic: a concurrent build never sees half a binary
    return binary, time.monotonic() - started


def _write_request(path: Path, runs: list[CapiRun]) -> None:
    with open(path, "wb") as out:
        out.write(_REQUEST_MAGIC)
        out.write(f"runs {len(runs)}\n".encode())
        for run in runs:
            out.write(f"run {run.label} {len(run.feeds)} {len(run.fetches)}\n".encode())
            for name, value in run.feeds.items():
                array = np.asarray(value, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
                number = _DTYPE_NUMBERS.get(array.dtype)
                if number is None:
                    raise BadInput(f"feed {name!r} of run {run.label!r} has dtype {array.dtype}, which the C "
                                   f"API runner does not pass (numeric types only).")
                dims = " ".join(str(d) for d in array.shape)
                head = f"feed {name} {number} {array.ndim}{' ' if dims else ''}{dims} {array.nbytes}\n"
                out.write(head.encode())
                out.write(array.tobytes())
                out.write(b"\n")
            for name in run.fetches:
                out.write(f"fetch {name}\n".encode())


def _line(stream) -> str:
    raw = stream.readline()
    if not raw.endswith(b"\n"):
        raise SeqExportError("The C API runner's answer ended early.")
    return raw[:-1].decode()


def _read_response(path: Path) -> tuple[str, int, list[CapiResult]]:
    with open(path, "rb") as stream:
        if _line(stream) != _RESPONSE_MAGIC:
            raise SeqExportError("The C API runner's answer has an unknown format.")
        tf_version = _line(stream).split(" ", 1)[1]
        load_us = int(_line(stream).split()[1])
        count = int(_line(stream).split()[1])
        results = []
        for _ in range(count):
            head = _line(stream).split()
            label, kind = head[1], head[2]
            if kind == "error":
                run_us, length = int(head[3]), int(head[4])
                message = stream.read(length).decode(errors="replace")
                stream.read(1)
                results.append(CapiResult(label=label, outputs={}, error=message, run_us=run_us))
                continue
            n_out, run_us = int(head[3]), int(head[4])
            outputs = {}
            for _ in range(n_out):
                fields = _line(stream).split()
                name, dtype, ndims = fields[1], int(fields[2]), int(fields[3])
                shape = tuple(int(d) for d in fields[4:4 + ndims])
                nbytes = int(fields[4 + ndims])
                data = stream.read(nbytes)
                stream.read(1)
                outputs[name] = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape).copy()
            results.append(CapiResult(label=label, outputs=outputs, error=None, run_us=run_us))
    return tf_version, load_us, results


def run_saved_model(
    export_dir: Path,
    runs: list[CapiRun],
    *,
    tags: tuple[str, ...] = ("serve",),
    cache: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> CapiAnswer:
    """Loads `export_dir` with `TF_LoadSessionFromSavedModel` in a child process and runs `runs`.

    A run that TF rejects (unknown tensor, wrong dtype or shape) comes back with
    its `error`; the others still run.

    Raises:
        SeqExportError: the SavedModel did not load (exit 1 at the CLI: the check failed).
        BadInput: the runner could not be built.
    """
    binary, build_s = build(directory=cache)
    with tempfile.TemporaryDirectory(prefix="seqexport-capi-") as tmp:
        request, response = Path(tmp) / "request.bin", Path(tmp) / "response.bin"
        _write_request(request, runs)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        try:
            proc = subprocess.run(
                [str(binary), str(Path(export_dir).resolve()), ",".join(tags), str(request), str(response)],
                capture_output=True, text=True, timeout=timeout_s, env=env,
            )
        except subprocess.TimeoutExpired:
            raise SeqExportError(f"The C API runner took over {timeout_s:.0f} s on {export_dir} and was stopped.") from None
        if proc.returncode == _EXIT_LOAD_FAILED:
            tail = "\n".join(line for line in proc.stderr.strip().splitlines() if "seqexport_run:" in line)
            raise LoadFailed(f"TF_LoadSessionFromSavedModel could not load {export_dir} with tags "
                             f"{list(tags)}: {tail.split(': ', 2)[-1] if tail else proc.stderr[-2000:]}")
        if proc.returncode != 0 or not response.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise SeqExportError(f"The C API runner failed (exit {proc.returncode}): {tail}")
        tf_version, load_us, results = _read_response(response)
    return CapiAnswer(results=tuple(results), tf_version=tf_version, load_us=load_us, build_s=build_s, binary=binary)


class LoadFailed(SeqExportError):
    """The SavedModel did not load through the C API: TF Serving would not load it either (exit 1)."""

    exit_code = 1
