"""Run the real `tritonserver` of the `nvidia-pytriton` wheel on a repository, and stream through it.

The wheel (`pip install 'seqexport[triton]'`) bundles Triton Inference Server with
its Python backend only. `TritonServer` lays out a backends folder (the Python
3.11 stub next to `libtriton_python.so`), starts the binary on 127.0.0.1 ports it
picks, with this environment's `bin` first on `PATH` and its `libpython` and the
wheel's bundled libraries on `LD_LIBRARY_PATH` (so the stub's Python is this one
and finds numpy and onnxruntime), waits until it is live, and stops it by its pid
(its process group: the stubs too) on every way out of the `with` block; a server
whose starting process dies (even by SIGKILL) is killed by the kernel.

`SequenceClient` sends one chunk of one sequence per request over gRPC or HTTP
(`tritonclient`), with the correlation id and the START / END flags (or, to a whole-sequence
export's model, whole sequences with no flags: `infer_tensors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np

from exporter.artifact.errors import BadInput, SeqExportError
from exporter.convert import triton

INSTALL_HINT = "pip install 'seqexport[triton]' (the nvidia-pytriton wheel bundles tritonserver)"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 30.0
HOST = "127.0.0.1"
# Region names of the Python backend's shared memory in /dev/shm; each server gets its own
# prefix so that a killed server's regions can be removed.
_SHM_PREFIX = "seqexport_triton_"


class ServerFailed(SeqExportError):
    """`tritonserver` exited or never became live; the message ends with its log's tail."""

    exit_code = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerFiles:
    """Where the wheel keeps the server.

    Attributes:
        binary: `tritonserver`.
        python_backend: the folder of `libtriton_python.so` and `triton_python_backend_utils.py`.
        stub: the Python stub for this interpreter's version.
        libraries: the wheel's bundled shared libraries (`nvidia_pytriton.libs`).
        version: the wheel's version.
    """

    binary: Path
    python_backend: Path
    stub: Path
    libraries: Path
    version: str


def find_server() -> ServerFiles:
    """The server files of the installed `nvidia-pytriton` wheel (nothing is imported).

    Raises:
        BadInput: the wheel (or a file of it) is missing.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(f"`seqexport check triton` needs the real tritonserver, which is not installed: {INSTALL_HINT}.")
    root = Path(next(iter(spec.submodule_search_locations)))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = ServerFiles(
        binary=root / "tritonserver" / "bin" / "tritonserver",
        python_backend=root / "tritonserver" / "backends" / "python",
        stub=root / "tritonserver" / "python_backend_stubs" / python / "triton_python_backend_stub",
        libraries=root.parent / "nvidia_pytriton.libs",
        version=metadata.version("nvidia-pytriton"),
    )
    for path in (files.binary, files.python_backend / "libtriton_python.so", files.stub, files.libraries):
        if not path.exists():
            raise BadInput(f"The nvidia-pytriton wheel has no {str(path)!r} (Python {python}); reinstall it: "
                           f"{INSTALL_HINT}.")
    return files


# A fresh interpreter that arms Linux's PR_SET_PDEATHSIG (SIGKILL when the starting thread dies), then
# becomes the server (`os.execv` keeps the pid and the armed signal), so a killed seqexport never leaves a
# server behind. Not a `preexec_fn`: Python between fork and exec is unsafe in a process with threads
# (gRPC's). The signal follows the starting *thread*: start servers from a thread that outlives them.
_EXEC_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"  # 1: PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]):\n"  # the parent died before the signal was armed
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _dying_with_parent(command: list[str]) -> list[str]:
    """`command` started through `_EXEC_DYING_WITH_PARENT` (Linux; elsewhere as it is)."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-I", "-c", _EXEC_DYING_WITH_PARENT, str(os.getpid()), *command]


def _remove_dead_regions() -> None:
    """Removes the Python backend's shared memory left by servers of seqexport processes that died
    (SIGKILL leaves no time to clean up); the region names carry the starting process's pid."""
    for region in Path("/dev/shm").glob(f"{_SHM_PREFIX}*"):
        pid = region.name[len(_SHM_PREFIX):].split("_", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                region.unlink()
        except PermissionError:  # another user's live process
            pass


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _get(url: str, timeout: float = 2.0) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class TritonServer:
    """One `tritonserver` process on 127.0.0.1 serving `repo` (use as a context manager).

    Attributes:
        pid: the server's process id (also its process group id).
        http_url, grpc_url: `127.0.0.1:PORT` for `tritonclient.http` / `tritonclient.grpc`.
        metrics_port: Triton's metrics port, on 127.0.0.1 too.
        start_seconds: from starting the process to the server being live with its models loaded.
        log_path: the server's log (stdout and stderr).
    """

    def __init__(self, repo: Path, *, files: ServerFiles | None = None, work_dir: Path | None = None,
                 ports: tuple[int, int, int] | None = None, exit_on_error: bool = False):
        self.repo = Path(repo).resolve()
        self.files = files or find_server()
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="seqexport-triton-")) if work_dir is None else Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ports = ports
        self.exit_on_error = exit_on_error
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self.log_path = self.work_dir / "tritonserver.log"
        self._shm_prefix = f"{_SHM_PREFIX}{os.getpid()}_{id(self):x}_"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.ports[0]}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.ports[1]}"

    @property
    def metrics_port(self) -> int:
        return self.ports[2]

    def _backends(self) -> Path:
        folder = self.work_dir / "backends" / "python"
        folder.mkdir(parents=True, exist_ok=True)
        for source in (self.files.python_backend / "libtriton_python.so",
                       self.files.python_backend / "triton_python_backend_utils.py", self.files.stub):
            target = folder / source.name
            if not target.exists():
                target.write_bytes(source.read_bytes())
                target.chmod(source.stat().st_mode | 0o500)
        return folder.parent

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(self.files.libraries), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(key, None)
        env["no_proxy"] = env["NO_PROXY"] = HOST
        return env

    def command(self) -> list[str]:
        http, grpc, metrics = self.ports
        return [
            str(self.files.binary), f"--model-repository={self.repo}", f"--backend-directory={self._backends()}",
            f"--http-address={HOST}", f"--http-port={http}", f"--grpc-address={HOST}", f"--grpc-port={grpc}",
            f"--metrics-address={HOST}", f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
            f"--exit-on-error={'true' if self.exit_on_error else 'false'}", "--strict-readiness=false",
            "--exit-timeout-secs=2", "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            "--log-verbose=0",
        ]

    def start(self, timeout: float = READY_TIMEOUT_S) -> "TritonServer":
        """Starts the server and waits until it is live and no model is still loading."""
        _remove_dead_regions()
        if self.ports is None:
            self.ports = tuple(_free_ports(3))
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(_dying_with_parent(self.command()), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self._environment(),
                                            start_new_session=True, cwd=self.work_dir)
        try:
            self._wait_live(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def _wait_live(self, deadline: float) -> None:
        url = f"http://{self.http_url}/v2/health/live"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerFailed(f"tritonserver exited with code {code} before it was live "
                                   f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                if _get(url) == 200 and not any(m.get("state") == "LOADING" for m in self.models()):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"tritonserver was not live after {deadline:.0f} s (log {self.log_path}):\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def models(self) -> list[dict]:
        """Triton's repository index: `{name, version, state, reason}` per model."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with opener.open(request, timeout=5) as response:
            return json.loads(response.read())

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the server and its stubs (its process group), at once."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after `STOP_TIMEOUT_S`; removes its shared memory."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            self.kill()  # the stubs of a server that exited on its own, or one that would not stop
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SequenceClient:
    """One chunk of one sequence per request, over `grpc` or `http` (a context manager).

    Example:
        >>> with TritonServer(Path("repo")) as server, SequenceClient("grpc", server.grpc_url) as client:
        ...     out = client.infer("demo", chunk, sequence_id=7, start=True)
    """

    def __init__(self, protocol: str, url: str, *, timeout: float = REQUEST_TIMEOUT_S):
        if protocol == "grpc":
            import tritonclient.grpc as module
        elif protocol == "http":
            import tritonclient.http as module
        else:
            raise ValueError(f"protocol must be grpc or http. Got: {protocol!r}")
        self.protocol, self.url, self.timeout = protocol, url, timeout
        self.module = module
        if protocol == "grpc":
            self.client = module.InferenceServerClient(url)
        else:
            self.client = module.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)

    def infer(self, model: str, chunk: np.ndarray, *, sequence_id: int = 0, start: bool = False, end: bool = False,
              outputs: tuple[str, ...] | None = None,
              statics: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Sends `chunk` (`[1, T, F]`) as input `inputs`, and each of `statics` (`[1, ...]`, an export's
        static inputs) by name; returns every output by name.

        Raises:
            tritonclient.utils.InferenceServerException: the server refused it or could not be reached.
        """
        return self.infer_tensors(model, {triton.CHUNK_INPUT: chunk, **(statics or {})}, outputs=outputs,
                                  sequence_id=sequence_id, sequence_start=start, sequence_end=end)

    def infer_tensors(self, model: str, feed: dict[str, np.ndarray], *, outputs: tuple[str, ...] | None = None,
                      **kwargs) -> dict[str, np.ndarray]:
        """Sends every array of `feed` by name in one request (a whole-sequence model's: no sequence
        flags; `kwargs` go to `tritonclient`'s `infer`); returns every output by name."""
        from tritonclient.utils import np_to_triton_dtype

        tensors = []
        for name, value in feed.items():
            value = np.ascontiguousarray(value)
            tensors.append(self.module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype)))
            tensors[-1].set_data_from_numpy(value)
        if self.protocol == "grpc":
            result = self.client.infer(model, tensors, client_timeout=self.timeout, **kwargs)
            names = outputs or [o.name for o in result.get_response().outputs]
        else:
            result = self.client.infer(model, tensors, **kwargs)
            names = outputs or [o["name"] for o in result.get_response()["outputs"]]
        return {name: result.as_numpy(name) for name in names}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "SequenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
