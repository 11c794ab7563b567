"""Publish a verified export as `<base>/<name>/<version>/`, atomically.

TF Serving polls `<base>/<name>/` and loads any folder whose name is a number the
moment it appears. So an export is staged beside it under a name that is not a
number (`.staging-<pid>-<token>`, same file system), fsynced, and renamed.

Two kinds of `flock` keep concurrent and killed exports apart; the kernel drops
both when their holder dies, so a killed export never leaves a lock that blocks
anyone:
- `<base>/<name>/.seqexport.lock` serialises version choice, publishing and
  cleaning, so concurrent exports of one name get their own version numbers;
- each staging folder has an owner file beside it (`.staging-<pid>-<token>.owner`)
  that its export holds locked for as long as it lives. A staging folder whose
  owner lock is free belongs to a dead export and is removed by the next export
  (which reports it). Process ids are not trusted for this: they are reused, and
  mean nothing across containers sharing a volume.

`--overwrite` swaps the new folder with the old one in one `renameat2(RENAME_EXCHANGE)`
call, so the version number never disappears and never shows a half-written folder;
file systems that cannot do that refuse `--overwrite` before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from exporter import fs
from exporter.artifact.errors import BadInput
from exporter.artifact.names import check_name
from exporter.artifact.paths import version_folders

STAGING_PREFIX = ".staging-"
OWNER_SUFFIX = ".owner"
LOCK_NAME = ".seqexport.lock"


# Errors of a full, read-only or forbidden disk: publishing turns them into exit 2 naming the folder.
_DISK_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def model_dir(base: Path, name: str) -> Path:
    return Path(base) / check_name(name)


def ensure_model_dir(base: Path, name: str) -> Path:
    """Creates `<base>/<name>/` if needed; a clear error when it cannot be written.

    `<base>/<name>` must be a real folder: a symbolic link there (which anyone who
    can write to `base` could plant) would send the export somewhere else, so it
    is refused.

    Raises:
        BadInput: a link, a file, or a folder that cannot be created or written.
    """
    directory = refuse_link(model_dir(base, name))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(_cannot_write(directory, exc)) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadInput(_cannot_write(directory, PermissionError(errno.EACCES, "Permission denied")))
    return directory


def refuse_link(directory: Path) -> Path:
    """Raises BadInput when the model folder is a symbolic link; see `ensure_model_dir`."""
    if directory.is_symlink():
        raise BadInput(
            f"{str(directory)!r} is a symbolic link (to {os.readlink(directory)!r}); seqexport writes only "
            "into real folders under --base, so that nothing lands outside it. Give the real folder's "
            "parent as --base, or replace the link with a folder."
        )
    return directory


def _cannot_write(path: Path, exc: OSError) -> str:
    return (
        f"Cannot write to {str(path)!r}: {exc.strerror or exc}. Nothing was published. "
        "Choose a --base you can write to (and with free space)."
    )


# ----------------------------------------------------------------------------- locks


@contextlib.contextmanager
def model_lock(directory: Path) -> Iterator[None]:
    """Holds the model folder's lock (blocking until it is free).

    The lock file is never followed through a symbolic link. A process that
    removes an empty model folder removes the lock file first (see `release`),
    so a lock taken on a file no longer at its path is dropped and taken again.
    """
    path = directory / LOCK_NAME
    while True:
        try:
            fd = fs.open_nofollow(path, create=True)
        except OSError as exc:
            raise BadInput(_cannot_write(directory, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if fs.same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # closing drops the flock


# ----------------------------------------------------------------------------- staging


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cleaned:
    """A staging folder removed because the export that wrote it is dead."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"removed the staging folder of a dead export: {self.path} ({self.reason})"


class Staging:
    """A staging folder this process owns: its owner file stays locked until `release()`.

    Attributes:
        path: the folder (`<directory>/.staging-<pid>-<token>`).
    """

    def __init__(self, directory: Path):
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.path = directory / f"{STAGING_PREFIX}{token}"
        self._owner = directory / f"{STAGING_PREFIX}{token}{OWNER_SUFFIX}"
        # Under the model lock, so a cleaner never sees the folder before its locked owner file.
        with model_lock(directory):
            try:
                self._fd = os.open(self._owner, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                   0o644)
            except OSError as exc:
                raise BadInput(_cannot_write(directory, exc)) from None
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                self.path.mkdir()
            except OSError as exc:
                self._drop_owner()
                raise BadInput(_cannot_write(directory, exc)) from None

    def _drop_owner(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._owner.unlink()
        os.close(self._fd)
        self._fd = -1

    def release(self) -> None:
        """Removes the folder (whatever it holds: a failed export, or the version a swap replaced)."""
        if self._fd < 0:
            return
        fs.remove(self.path)
        self._drop_owner()

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def new_staging(directory: Path) -> Staging:
    """A fresh staging folder in `directory`, owned (locked) by this process until released."""
    return Staging(directory)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(directory: Path, on_remove: Callable[[Cleaned], None] = lambda _: None) -> list[Cleaned]:
    """Removes staging folders of dead exports (their owner lock is free); returns what it removed.

    A staging folder without an owner file (written by an older seqexport) is
    removed when no process has the pid in its name. Never follows a link.
    `on_remove` hears of each folder BEFORE it goes: an export killed while cleaning
    has then still said what it was removing (the next one finishes the job).
    """
    removed: list[Cleaned] = []
    if not directory.is_dir():
        return removed
    with model_lock(directory):
        for entry in sorted(directory.iterdir()):
            name = entry.name
            if not name.startswith(STAGING_PREFIX):
                continue
            if name.endswith(OWNER_SUFFIX):
                folder = entry.with_name(name[: -len(OWNER_SUFFIX)])
                if not os.path.lexists(folder):  # an owner file whose folder is gone
                    fd = fs.try_lock(entry)
                    if fd is not None:
                        with contextlib.suppress(FileNotFoundError):
                            entry.unlink()
                        os.close(fd)
                continue
            owner = entry.with_name(name + OWNER_SUFFIX)
            if os.path.lexists(owner):
                fd = fs.try_lock(owner)
                if fd is None:
                    continue  # its export is alive
                item = Cleaned(path=entry, reason="its export died: the owner lock was free")
                on_remove(item)
                fs.remove(entry)
                with contextlib.suppress(FileNotFoundError):
                    owner.unlink()
                os.close(fd)
                removed.append(item)
                continue
            pid = name[len(STAGING_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                item = Cleaned(path=entry, reason=f"no owner file, and process {pid} is gone")
                on_remove(item)
                fs.remove(entry)
                removed.append(item)
    return removed


def release_model_dir(directory: Path) -> None:
    """Removes `directory` if it holds nothing but its lock file (an export that created it failed)."""
    with contextlib.suppress(OSError):
        with model_lock(directory):
            if {p.name for p in directory.iterdir()} != {LOCK_NAME}:
                return
            (directory / LOCK_NAME).unlink()  # lock holders re-check the path (see model_lock)
        directory.rmdir()


def check_exchange_supported(staging: Staging) -> None:
    """Swaps two empty folders inside `staging`; refuses `--overwrite` where that is impossible.

    Raises:
        BadInput: the file system cannot exchange two folders atomically.
    """
    a, b = staging.path / ".exchange-a", staging.path / ".exchange-b"
    a.mkdir()
    b.mkdir()
    try:
        fs.renameat2(a, b, fs.RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno in fs.UNSUPPORTED:
            raise BadInput(_no_exchange(staging.path.parent, exc)) from None
        raise
    finally:
        a.rmdir()
        b.rmdir()


def _no_exchange(directory: Path, exc: OSError) -> str:
    return (
        f"--overwrite needs an atomic swap of two folders, and the file system holding {str(directory)!r} "
        f"refuses it (renameat2 RENAME_EXCHANGE: {exc.strerror}). Replacing a version in two steps would "
        "leave TF Serving a moment without it, so nothing was changed. Publish a new version instead "
        "(leave out --version), or remove the old version folder yourself first."
    )


def version_taken(directory: Path, version: int) -> BadInput:
    target = directory / str(version)
    return BadInput(
        f"Version {version} of {directory.name!r} already exists at {str(target)!r}. Choose another "
        "--version, leave it out to publish the next number, or add --overwrite to replace it atomically."
    )


def publish(
    staging: Staging, directory: Path, version: int | None = None, *, overwrite: bool = False
) -> tuple[int, Path, bool]:
    """Renames a complete staging folder to the next (or the given) version number.

    With `overwrite`, an existing version is swapped out in one atomic exchange;
    the old folder then sits at `staging.path`, which `staging.release()` removes.

    Returns:
        (version, its folder, whether an existing version was replaced).

    Raises:
        BadInput: `version` already exists (without `overwrite`), is not a plain
            folder, or the file system cannot swap it atomically.
    """
    fs.fsync_tree(staging.path)
    with model_lock(directory):
        existing = sorted(version_folders(directory))
        if version is None:
            version = (existing[-1] + 1) if existing else 1
        target = directory / str(version)
        replaced = os.path.lexists(target)
        if replaced:
            if not overwrite:
                raise version_taken(directory, version)
            if target.is_symlink() or not target.is_dir():
                raise BadInput(
                    f"{str(target)!r} is not a plain folder (a link or a file); --overwrite replaces only "
                    "version folders seqexport could have written. Remove it yourself first."
                )
            try:
                fs.renameat2(staging.path, target, fs.RENAME_EXCHANGE)
            except OSError as exc:
                if exc.errno in fs.UNSUPPORTED:
                    raise BadInput(_no_exchange(directory, exc)) from None
                raise
        else:
            try:
                fs.renameat2(staging.path, target, fs.RENAME_NOREPLACE)
            except OSError as exc:
                if exc.errno not in fs.UNSUPPORTED:
                    raise
                os.rename(staging.path, target)  # no NOREPLACE here; the lock and the check above stand in
        fs.fsync_dir(directory)
    return version, target, replaced


@dataclasses.dataclass
class StagedVersion:
    """What `staged_version` yields: write the version into `path`; the rest is set once it is published.

    Attributes:
        path: the staging folder (not a number, so TF Serving never loads it).
        cleaned: staging folders of dead exports removed before this one began.
        version: the published version number (None until published).
        published: the published folder `<base>/<name>/<version>/`.
        replaced: whether an existing version was swapped out (`overwrite`).
    """

    path: Path
    cleaned: tuple[Cleaned, ...]
    version: int | None = None
    published: Path | None = None
    replaced: bool = False


@contextlib.contextmanager
def staged_version(base: Path, name: str, *, version: int | None = None, overwrite: bool = False,
                   on_remove: Callable[[Cleaned], None] = lambda _: None) -> Iterator[StagedVersion]:
    """Stages a version of `<base>/<name>/`; publishes it when the block ends, removes it if the block raises.

    Before anything slow: the model folder must not be a link, leftovers of dead exports go,
    a `version` that exists is refused (unless `overwrite`) and so is an `overwrite` the file
    system cannot swap atomically. A model folder this call created is removed again when
    nothing was published.

    Raises:
        BadInput: a bad name or version, a link, a folder that cannot be written, or a
            version taken; see `publish` for what publishing itself refuses.
    """
    check_name(name)
    if version is not None and version < 1:
        raise BadInput(f"--version must be a positive integer. Got: {version}")
    if overwrite and version is None:
        raise BadInput("--overwrite replaces the version given with --version; give one.")
    directory = refuse_link(Path(base) / name)
    cleaned = tuple(clean_stale_staging(directory, on_remove=on_remove)) if directory.is_dir() else ()
    if version is not None and not overwrite and (directory / str(version)).exists():
        raise version_taken(directory, version)
    created = not directory.exists()
    directory = ensure_model_dir(base, name)
    staging = None
    try:
        staging = new_staging(directory)
        if overwrite:
            check_exchange_supported(staging)
        staged = StagedVersion(path=staging.path, cleaned=cleaned)
        yield staged
        try:
            staged.version, staged.published, staged.replaced = publish(staging, directory, version,
                                                                        overwrite=overwrite)
        except OSError as exc:
            if exc.errno not in _DISK_FULL_OR_READ_ONLY:
                raise
            raise BadInput(_cannot_write(directory, exc)) from None
    finally:
        if staging is not None:
            staging.release()
        if created:
            release_model_dir(directory)
