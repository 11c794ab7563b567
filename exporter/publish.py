"""Publish a verified export as `<base>/<name>/<version>/`, atomically.

TF Serving polls `<base>/<name>/` and loads any folder whose name is a number the
moment it appears. So an export is staged beside it under a name that is not a
number (`.staging-<pid>-<token>`, same file system), fsynced, and renamed. A
`flock` on `<base>/<name>/.seqexport.lock` serialises version choice; the kernel
drops it when its holder dies, so a killed export never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from exporter.errors import BadInput

STAGING_PREFIX = ".staging-"
LOCK_NAME = ".seqexport.lock"
# TF Serving model names end up in URLs (/v1/models/NAME) and file names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise BadInput(
            f"Model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', starting "
            "with a letter or digit, no '..' (TF Serving puts it in URLs and paths)."
        )
    return name


def model_dir(base: Path, name: str) -> Path:
    return Path(base) / check_name(name)


def versions(directory: Path) -> list[int]:
    """The published versions: sub-folders whose name is a number, as TF Serving sees them."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(directory: Path) -> list[Path]:
    """Removes staging folders left by exports that were killed; returns what it removed."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if not path.name.startswith(STAGING_PREFIX):
            continue
        pid = path.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def ensure_writable(base: Path, name: str) -> Path:
    """Creates `<base>/<name>/` if needed; a clear error when that is impossible."""
    directory = model_dir(base, name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{STAGING_PREFIX}{os.getpid()}-probe"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as exc:
        raise BadInput(
            f"Cannot write under base directory {str(base)!r}: {exc.strerror or exc}. "
            "Choose a --base you can write to."
        ) from None
    return directory


def new_staging_dir(directory: Path) -> Path:
    path = directory / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


@contextlib.contextmanager
def model_lock(directory: Path) -> Iterator[None]:
    with open(directory / LOCK_NAME, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for file in files:
            fd = os.open(os.path.join(folder, file), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, directory: Path, version: int | None = None) -> tuple[int, Path]:
    """Renames a complete staging folder to the next (or the given) version number.

    Raises:
        BadInput: `version` already exists.
    """
    _fsync_tree(staging)
    with model_lock(directory):
        existing = versions(directory)
        if version is None:
            version = (existing[-1] + 1) if existing else 1
        target = directory / str(version)
        if target.exists():
            raise BadInput(
                f"Version {version} of {directory.name!r} already exists at {str(target)!r}. "
                "Choose another --version, or leave it out to publish the next number."
            )
        os.rename(staging, target)
        _fsync_dir(directory)
    return version, target
