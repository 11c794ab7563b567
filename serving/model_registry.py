"""Find, load and unload model versions under a base folder, as TF Serving does.

TF Serving polls `<base_path>` of each model and serves the folders whose name
is a number; seqexport publishes a version by renaming a complete staging folder
(`.staging-*`, not a number) into place. The registry does the same: every poll
lists `BASE/NAME/<digits>/` that hold a `saved_model.pb`, loads the newest
`versions` of them, then unloads the rest, but only once a wanted version is
loaded: a model never goes dark, even when its newest version fails to load.
A version that fails is reported in its status (state END with the error),
retried on later polls up to `max_load_attempts`, and never stops the others
from serving. Requests take a reference to a loaded version under a lock and
run outside it, so a swap never waits for a request.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from serving.signatures import SignatureView, views_from_signature_defs
from serving.status import Code, ServingError, not_found

log = logging.getLogger("seqexport.serve")

SAVED_MODEL_FILE = "saved_model.pb"
SERVE_TAG = "serve"
DEFAULT_POLL_SECONDS = 1.0
DEFAULT_MAX_LOAD_ATTEMPTS = 3


class State(enum.Enum):
    """`ModelVersionStatus.State` of TF Serving's get_model_status.proto (same numbers)."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(frozen=True, kw_only=True)
class VersionStatus:
    """One row of GetModelStatus: a version, its state, and the error that ended it (if any)."""

    version: int
    state: State
    error: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServedVersion:
    """A loaded version: its signatures (as TF Serving reports them) and callables.

    Attributes:
        name: model name.
        version: version number.
        path: the version folder.
        signature_defs: the `serve` MetaGraph's SignatureDef protos, by name.
        views: the same as `SignatureView`s (keys, dtypes, shapes).
        functions: the loaded concrete functions, by signature name.
        manifest: the seqexport `Manifest`, or None for a SavedModel seqexport did not write.
        loaded: the object `tf.saved_model.load` returned (keeps the variables alive).
    """

    name: str
    version: int
    path: Path
    signature_defs: Mapping
    views: Mapping[str, SignatureView]
    functions: Mapping[str, Callable]
    manifest: object | None
    loaded: object


def version_folders(model_dir: Path) -> dict[int, Path]:
    """Version folders TF Serving would consider: a number as name, a `saved_model.pb` inside.

    A folder without `saved_model.pb` is skipped until it has one (a copy still
    under way); staging folders and any other non-numeric name are never seen.
    """
    found = {}
    try:
        entries = list(model_dir.iterdir())
    except OSError:
        return found
    for path in entries:
        if path.name.isdigit() and path.is_dir() and (path / SAVED_MODEL_FILE).is_file():
            found[int(path.name)] = path
    return found


def load_version(name: str, version: int, path: Path) -> ServedVersion:
    """Loads one version folder (TensorFlow's loader, the `serve` MetaGraph's signatures).

    Its warmup records, if any, are replayed before it is returned (`serving.warmup_replay`).
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from exporter.paths import manifest_path
    from exporter.specs import Manifest

    saved_model = saved_model_pb2.SavedModel.FromString((path / SAVED_MODEL_FILE).read_bytes())
    graphs = [g for g in saved_model.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
    if not graphs:
        raise ValueError(f"{path / SAVED_MODEL_FILE} has no MetaGraph tagged {SERVE_TAG!r}.")
    signature_defs = dict(graphs[0].signature_def)
    loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    functions = {k: loaded.signatures[k] for k in signature_defs if k in loaded.signatures}
    manifest = None
    if manifest_path(path).is_file():
        manifest = Manifest.from_json(json.loads(manifest_path(path).read_text()))
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
    from serving.warmup_replay import replay  # it runs requests through serving.predict

    replay(served)
    return served


@dataclasses.dataclass
class _Model:
    served: dict[int, ServedVersion] = dataclasses.field(default_factory=dict)
    status: dict[int, VersionStatus] = dataclasses.field(default_factory=dict)
    # version -> (load attempts, folder mtime when they were made)
    attempts: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)


class ModelRegistry:
    """The models under `base`, kept in step with the folders by `poll()`.

    Args:
        base: the folder holding one sub-folder per model (seqexport's `--base`).
        names: serve only these models (default: every sub-folder with a valid model name).
        versions: how many of the newest versions to serve (TF Serving's `latest { num_versions }`).
        labels: version labels per model, e.g. `{"demo": {"stable": 3}}`.
        max_load_attempts: loads tried per version before it is left failed; a
            folder that changes (new modification time) gets fresh attempts.
    """

    def __init__(
        self,
        base: Path,
        *,
        names: tuple[str, ...] = (),
        versions: int = 1,
        labels: Mapping[str, Mapping[str, int]] | None = None,
        max_load_attempts: int = DEFAULT_MAX_LOAD_ATTEMPTS,
    ):
        if versions < 1:
            raise ValueError(f"`versions` must be positive. Got: {versions}")
        self.base = Path(base)
        self.names = tuple(names)
        self.versions = versions
        self.labels = {k: dict(v) for k, v in (labels or {}).items()}
        self.max_load_attempts = max_load_attempts
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
            ServingError: NOT_FOUND for an unknown model, version or label, or one not loaded.
        """
        if version is not None and label:
            raise ServingError(Code.INVALID_ARGUMENT, "give a model version or a version label, not both.")
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise not_found(f"Servable not found for request: model {name!r} is not served "
                                f"(served: {sorted(self._models)}).")
            if label:
                labels = self.labels.get(name, {})
                if label not in labels:
                    raise not_found(f"model {name!r} has no version label {label!r} (labels: {sorted(labels)}).")
                version = labels[label]
            if version is None:
                if not model.served:
                    raise not_found(f"Servable not found for request: no version of model {name!r} is available.")
                return model.served[max(model.served)]
            served = model.served.get(version)
            if served is None:
                raise not_found(
                    f"Servable not found for request: version {version} of model {name!r} is not available "
                    f"(available: {sorted(model.served)})."
                )
            return served

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """GetModelStatus: every known version of `name` (or one), newest first."""
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.status:
                raise not_found(f"Could not find any versions of model {name!r}.")
            if label:
                labels = self.labels.get(name, {})
                if label not in labels:
                    raise not_found(f"model {name!r} has no version label {label!r} (labels: {sorted(labels)}).")
                version = labels[label]
            if version is not None:
                if version not in model.status:
                    raise not_found(f"Could not find version {version} of model {name!r}.")
                return [model.status[version]]
            return [model.status[v] for v in sorted(model.status, reverse=True)]

    # ----- polling -----

    def _model_dirs(self) -> dict[str, Path]:
        from exporter.publish import check_name

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
        folders = version_folders(directory)
        wanted = sorted(folders, reverse=True)[: self.versions]
        with self._lock:
            model = self._models.setdefault(name, _Model())
            to_load = [v for v in wanted if v not in model.served and self._may_try(model, v, folders[v])]
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

    def _may_try(self, model: _Model, version: int, path: Path) -> bool:
        count, mtime = model.attempts.get(version, (0, 0))
        if count and mtime != _mtime(path):
            model.attempts.pop(version)
            return True
        return count < self.max_load_attempts

    def _load(self, name: str, version: int, path: Path) -> None:
        with self._lock:
            model = self._models[name]
            model.status[version] = VersionStatus(version=version, state=State.LOADING)
            count, mtime = model.attempts.get(version, (0, _mtime(path)))
            model.attempts[version] = (count + 1, mtime)
        started = time.monotonic()
        try:
            served = load_version(name, version, path)
        except Exception as exc:  # noqa: BLE001 - a broken folder is reported, never fatal
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.error("model %s version %s failed to load: %s", name, version, message)
            with self._lock:
                model.status[version] = VersionStatus(version=version, state=State.END, error=message)
            return
        with self._lock:
            model.served[version] = served
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


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
