"""Find, load and unload model versions under a base folder, as TF Serving does.

TF Serving polls `<base_path>` of each model and serves the folders whose name
is a number; seqexport publishes a version by renaming a complete staging folder
(`.staging-*`, not a number) into place. The registry does the same: every poll
lists `BASE/NAME/<digits>/` that hold a `saved_model.pb`, loads the newest
`versions` of them, then unloads the rest, but only once a wanted version is
loaded: a model never goes dark, even when its newest version fails to load.

A load that fails is retried as TF Serving's `LoaderHarness::Load` retries it
(util/retrier.cc): up to `max_num_load_retries` more times,
`load_retry_interval_s` apart (TF Serving's defaults: 5 and 60 s, server.h);
meanwhile the version is LOADING, and once every try failed it is END with the
error's own code (NOT_FOUND for a missing file, DATA_LOSS for a file that does
not parse, ...). So a version folder copied in non-atomically (`cp -r`,
`rsync`) is served once the copy is complete. It is never served before: a
load whose folder changed while it ran (files added, grown or rewritten)
counts as a failed try. A version that stopped being wanted stops being
retried; one whose folder disappears and comes back gets fresh tries.
Requests take a reference to a loaded version under a lock and run outside it,
so a swap never waits for a request.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from exporter.artifact.manifest import has_manifest, read_manifest
from exporter.artifact.names import SERVE_TAG, check_name
from exporter.artifact.paths import SAVED_MODEL_FILE, version_folders
from serving.server.served import ServedVersion
from serving.server.warmup_replay import replay
from serving.signatures import views_from_signature_defs
from serving.server.defaults import DEFAULT_LOAD_RETRY_INTERVAL_S, DEFAULT_MAX_NUM_LOAD_RETRIES, DEFAULT_POLL_SECONDS
from serving.status import Code, ServingError, code_of, invalid, not_found

log = logging.getLogger("seqexport.serve")



class State(enum.Enum):
    """`ModelVersionStatus.State` of TF Serving's get_model_status.proto (same numbers)."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(frozen=True, kw_only=True)
class VersionStatus:
    """One row of GetModelStatus: a version, its state, and the error that ended it (if any).

    Attributes:
        version: version number.
        state: its `ModelVersionStatus.State`.
        error: the error message ('' when none).
        error_code: the numeric `tensorflow.error.Code` of that error (0: OK).
    """

    version: int
    state: State
    error: str = ""
    error_code: int = 0


def load_version(name: str, version: int, path: Path) -> ServedVersion:
    """Loads one version folder (TensorFlow's loader, the `serve` MetaGraph's signatures).

    Its warmup records, if any, are replayed before it is returned (`serving.server.warmup_replay`).
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((path / SAVED_MODEL_FILE).read_bytes())
    graphs = [g for g in saved_model.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
    if not graphs:
        raise ValueError(f"{path / SAVED_MODEL_FILE} has no MetaGraph tagged {SERVE_TAG!r}.")
    signature_defs = dict(graphs[0].signature_def)
    loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    functions = {k: loaded.signatures[k] for k in signature_defs if k in loaded.signatures}
    manifest = read_manifest(path) if has_manifest(path) else None
    served = ServedVersion(
        name=name,
        version=version,
        path=path,
        signature_defs=signature_defs,
        views=views_from_signature_defs(signature_defs),
        functions=functions,
        manifest=manifest,
        loaded=loaded,
    )
    replay(served)
    return served


@dataclasses.dataclass
class _Tries:
    """Load tries of one version: how many were made, when the next is due, the last error."""

    count: int = 0
    next_at: float = 0.0
    error: VersionStatus | None = None
    exhausted: bool = False


@dataclasses.dataclass
class _Model:
    served: dict[int, ServedVersion] = dataclasses.field(default_factory=dict)
    status: dict[int, VersionStatus] = dataclasses.field(default_factory=dict)
    tries: dict[int, _Tries] = dataclasses.field(default_factory=dict)


def folder_fingerprint(path: Path) -> tuple:
    """(relative path, size, mtime) of every file under `path`: changes while a copy is under way."""
    rows = []
    try:
        for file in sorted(path.rglob("*")):
            try:
                info = file.stat()
            except OSError:
                continue
            rows.append((str(file.relative_to(path)), info.st_size if file.is_file() else -1, info.st_mtime_ns))
    except OSError:
        return ()
    return tuple(rows)


class ModelRegistry:
    """The models under `base`, kept in step with the folders by `poll()`.

    Args:
        base: the folder holding one sub-folder per model (seqexport's `--base`).
        names: serve only these models (default: every sub-folder with a valid model name).
        versions: how many of the newest versions to serve (TF Serving's `latest { num_versions }`).
        labels: version labels per model, e.g. `{"demo": {"stable": 3}}`. A label
            may point at a version that is not loaded (TF Serving's
            `allow_version_labels_for_unavailable_models`): requests through it are
            NOT_FOUND and its status row says which label points at it.
        max_num_load_retries: tries after the first failed load (0: load once).
        load_retry_interval_s: seconds between two tries of one version.
    """

    def __init__(
        self,
        base: Path,
        *,
        names: tuple[str, ...] = (),
        versions: int = 1,
        labels: Mapping[str, Mapping[str, int]] | None = None,
        max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
        load_retry_interval_s: float = DEFAULT_LOAD_RETRY_INTERVAL_S,
    ):
        if versions < 1:
            raise ValueError(f"`versions` must be positive. Got: {versions}")
        if max_num_load_retries < 0:
            raise ValueError(f"`max_num_load_retries` must be >= 0. Got: {max_num_load_retries}")
        if load_retry_interval_s < 0:
            raise ValueError(f"`load_retry_interval_s` must be >= 0. Got: {load_retry_interval_s}")
        self.base = Path(base)
        self.names = tuple(names)
        self.versions = versions
        self.labels = {k: dict(v) for k, v in (labels or {}).items()}
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval_s = load_retry_interval_s
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()

    # ----- lookups (request path) -----

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def get(self, name: str, version: int | None = None, label: str | None = None) -> ServedVersion:
        """The version a request asks for: a number, a label, or (neither) the newest loaded.

        Raises:
            ServingError: NOT_FOUND for an unknown model or version, or one not
                loaded; INVALID_ARGUMENT for an unknown label (server_core.cc's
                `GetModelVersionForLabel`).
        """
        if version is not None and label:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise not_found(f"Servable not found for request: model {name!r} is not served "
                                f"(served: {sorted(self._models)}).")
            if label:
                labels = self.labels.get(name, {})
                if label not in labels:
                    raise invalid(f"Unrecognized servable version label: {label} "
                                  f"(model {name!r} has labels {sorted(labels)}).")
                version = labels[label]
            if version is None:
                if not model.served:
                    raise not_found(f"Servable not found for request: no version of model {name!r} is available.")
                return model.served[max(model.served)]
            served = model.served.get(version)
            if served is None:
                through = f" (version label {label!r} points at it)" if label else ""
                raise not_found(
                    f"Servable not found for request: version {version} of model {name!r} is not available"
                    f"{through} (available: {sorted(model.served)})."
                )
            return served

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: every known version of `name` (or one), newest first.

        There is no label argument: GetModelStatus ignores `version_label`
        (get_model_status_impl.cc looks at `model_spec.version` only). A version
        that a label points at but that is not AVAILABLE carries an error naming
        the label, with a row of its own when the server never tried it.
        """
        with self._lock:
            model = self._models.get(name)
            rows = dict(model.status) if model is not None else {}
            for label, target in sorted(self.labels.get(name, {}).items()):
                row = rows.get(target)
                if row is not None and row.state is State.AVAILABLE:
                    continue
                note = f"version label {label!r} points at version {target}, which is not available"
                if row is None:
                    rows[target] = VersionStatus(version=target, state=State.END, error_code=Code.NOT_FOUND.number,
                                                 error=f"{note}: it is not among the versions this server loads.")
                else:
                    rows[target] = dataclasses.replace(
                        row, error_code=row.error_code or Code.NOT_FOUND.number,
                        error=f"{note}: {row.error}" if row.error else f"{note} ({row.state.name}).")
            if not rows or model is None:
                raise not_found(f"Could not find any versions of model {name}")
            if version is not None:
                if version not in rows:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [rows[version]]
            return [rows[v] for v in sorted(rows, reverse=True)]

    # ----- polling -----

    def _model_dirs(self) -> dict[str, Path]:
        if self.names:
            return {name: self.base / name for name in self.names}
        found = {}
        try:
            entries = list(self.base.iterdir())
        except OSError:
            return found
        for path in entries:
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                check_name(path.name)
            except Exception:  # noqa: BLE001 - a folder TF Serving could not name is not a model
                continue
            found[path.name] = path
        return found

    def poll(self) -> None:
        """Brings the served versions in step with the folders (one pass; never raises)."""
        with self._poll_lock:
            for name, directory in sorted(self._model_dirs().items()):
                try:
                    self._poll_model(name, directory)
                except Exception as exc:  # noqa: BLE001 - one model must not stop the others
                    log.error("polling model %s failed: %s", name, exc)
            self._forget_missing(set(self._model_dirs()))

    def _forget_missing(self, present: set[str]) -> None:
        for name in list(self._models):
            if name not in present:
                self._unload(name, set(self._models[name].served))

    def _poll_model(self, name: str, directory: Path) -> None:
        folders = version_folders(directory, loadable=True)
        wanted = sorted(folders, reverse=True)[: self.versions]
        now = time.monotonic()
        with self._lock:
            model = self._models.setdefault(name, _Model())
            for version in list(model.tries):
                if version not in folders:  # gone: if it comes back, it gets fresh tries
                    model.tries.pop(version)
                elif version not in wanted and not model.tries[version].exhausted:
                    self._give_up(model, version)  # no longer wanted: TF Serving cancels the retries
            to_load = [v for v in wanted if v not in model.served and self._due(model, v, now)]
        for version in sorted(to_load, reverse=True):
            self._load(name, version, folders[version])
        with self._lock:
            stale = set(model.served) - set(wanted)
            if stale and not set(model.served) & set(wanted):
                # No wanted version loaded (they failed): keep the newest one
                # that works rather than take the model dark.
                stale.discard(max(stale))
            # Versions deleted before they ever loaded drop out of the status list.
            for version in list(model.status):
                if version not in folders and version not in model.served:
                    if model.status[version].state is not State.END:
                        model.status[version] = VersionStatus(version=version, state=State.END)
        self._unload(name, stale)

    @staticmethod
    def _due(model: _Model, version: int, now: float) -> bool:
        tries = model.tries.get(version)
        return tries is None or (not tries.exhausted and now >= tries.next_at)

    @staticmethod
    def _give_up(model: _Model, version: int) -> None:
        tries = model.tries[version]
        tries.exhausted = True
        if tries.error is not None and version not in model.served:
            model.status[version] = tries.error

    def _load(self, name: str, version: int, path: Path) -> None:
        with self._lock:
            model = self._models[name]
            model.status[version] = VersionStatus(version=version, state=State.LOADING)
            tries = model.tries.setdefault(version, _Tries())
            tries.count += 1
        started = time.monotonic()
        before = folder_fingerprint(path)
        try:
            served = load_version(name, version, path)
            if folder_fingerprint(path) != before:
                raise ServingError(Code.UNAVAILABLE, f"{path} changed while it was loading (a copy still under way?); "
                                                     "it is loaded again once it stops changing.")
        except Exception as exc:  # noqa: BLE001 - a broken folder is reported, never fatal
            code = code_of(exc)
            text = exc.message if isinstance(exc, ServingError) else str(exc)
            text = " ".join(line.strip() for line in text.splitlines() if line.strip())[:600]
            message = text if isinstance(exc, ServingError) else f"{type(exc).__name__}: {text}"
            error = VersionStatus(version=version, state=State.END, error=message, error_code=code.number)
            with self._lock:
                tries.error = error
                if tries.count > self.max_num_load_retries:
                    log.error("model %s version %s failed to load (%d tries, giving up): %s: %s", name, version,
                              tries.count, code.grpc_name, message)
                    self._give_up(model, version)
                else:
                    log.error("model %s version %s failed to load (try %d of %d; next in %g s): %s: %s", name,
                              version, tries.count, self.max_num_load_retries + 1, self.load_retry_interval_s,
                              code.grpc_name, message)
                    tries.next_at = time.monotonic() + self.load_retry_interval_s
            return
        with self._lock:
            model.served[version] = served
            model.tries.pop(version, None)
            model.status[version] = VersionStatus(version=version, state=State.AVAILABLE)
        log.info("model %s version %s available (%.1f s)", name, version, time.monotonic() - started)

    def _unload(self, name: str, versions: set[int]) -> None:
        if not versions:
            return
        with self._lock:
            model = self._models[name]
            for version in versions:
                model.status[version] = VersionStatus(version=version, state=State.UNLOADING)
                model.served.pop(version, None)
            for version in versions:
                model.status[version] = VersionStatus(version=version, state=State.END)
        for version in sorted(versions):
            log.info("model %s version %s unloaded", name, version)

