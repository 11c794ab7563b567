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
import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import os
import platform
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from exporter.errors import BadInput

STAGING_PREFIX = ".staging-"
OWNER_SUFFIX = ".owner"
LOCK_NAME = ".seqexport.lock"
# TF Serving model names end up in URLs (/v1/models/NAME, where '/' and ':' end the
# name), in its config files and in file names; this keeps to what all of them accept.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# renameat2 syscall numbers, for a C library without the wrapper (glibc < 2.28).
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "ppc64le": 357, "s390x": 347}
# errno values meaning "this file system or kernel cannot do that rename".
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def check_name(name: str) -> str:
    """Returns `name` if TF Serving and every file system can use it as a model name.

    Raises:
        BadInput: it has `/`, `..`, `:`, spaces, other characters, or is too long.
    """
    if not _NAME.match(name) or ".." in name:
        raise BadInput(
            f"Model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', starting "
            "with a letter or digit, no '..', at most 128 characters (TF Serving puts it in URLs and paths)."
        )
    return name


def model_dir(base: Path, name: str) -> Path:
    return Path(base) / check_name(name)


def versions(directory: Path) -> list[int]:
    """The published versions: sub-folders whose name is a number, as TF Serving sees them."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


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


def _open_nofollow(path: Path, *, create: bool) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    return os.open(path, flags, 0o644)


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
            fd = _open_nofollow(path, create=True)
        except OSError as exc:
            raise BadInput(_cannot_write(directory, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _same_file(fd: int, path: Path) -> bool:
    try:
        linked = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (linked.st_dev, linked.st_ino)


def _try_lock(path: Path) -> int | None:
    """An fd holding `path`'s flock, or None when another process holds it (or it is gone)."""
    try:
        fd = _open_nofollow(path, create=False)
    except FileNotFoundError:
        return None
    except OSError:  # a link planted under an owner's name, or unreadable: leave it alone
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


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
        _remove(self.path)
        self._drop_owner()

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def new_staging(directory: Path) -> Staging:
    """A fresh staging folder in `directory`, owned (locked) by this process until released."""
    return Staging(directory)


def _remove(path: Path) -> None:
    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


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
                    fd = _try_lock(entry)
                    if fd is not None:
                        with contextlib.suppress(FileNotFoundError):
                            entry.unlink()
                        os.close(fd)
                continue
            owner = entry.with_name(name + OWNER_SUFFIX)
            if os.path.lexists(owner):
                fd = _try_lock(owner)
                if fd is None:
                    continue  # its export is alive
                item = Cleaned(path=entry, reason="its export died: the owner lock was free")
                on_remove(item)
                _remove(entry)
                with contextlib.suppress(FileNotFoundError):
                    owner.unlink()
                os.close(fd)
                removed.append(item)
                continue
            pid = name[len(STAGING_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                item = Cleaned(path=entry, reason=f"no owner file, and process {pid} is gone")
                on_remove(item)
                _remove(entry)
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


# ----------------------------------------------------------------------------- rename


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def renameat2(src: Path, dst: Path, flags: int) -> None:
    """Linux `renameat2(2)`.

    Raises:
        OSError: as the call fails; errno EINVAL/ENOSYS/EOPNOTSUPP when the file
            system or kernel does not support `flags`.
    """
    if platform.system() != "Linux":
        raise OSError(errno.ENOSYS, "renameat2 is Linux only")
    libc = _libc()
    args = (ctypes.c_int(_AT_FDCWD), os.fsencode(src), ctypes.c_int(_AT_FDCWD), os.fsencode(dst),
            ctypes.c_uint(flags))
    function = getattr(libc, "renameat2", None)
    if function is not None:
        result = function(*args)
    elif platform.machine() in _SYS_RENAMEAT2:
        result = libc.syscall(ctypes.c_long(_SYS_RENAMEAT2[platform.machine()]), *args)
    else:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src), None, str(dst))


def check_exchange_supported(staging: Staging) -> None:
    """Swaps two empty folders inside `staging`; refuses `--overwrite` where that is impossible.

    Raises:
        BadInput: the file system cannot exchange two folders atomically.
    """
    a, b = staging.path / ".exchange-a", staging.path / ".exchange-b"
    a.mkdir()
    b.mkdir()
    try:
        renameat2(a, b, RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
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


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for file in files:
            path = os.path.join(folder, file)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
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
    _fsync_tree(staging.path)
    with model_lock(directory):
        existing = versions(directory)
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
                renameat2(staging.path, target, RENAME_EXCHANGE)
            except OSError as exc:
                if exc.errno in _UNSUPPORTED:
                    raise BadInput(_no_exchange(directory, exc)) from None
                raise
        else:
            try:
                renameat2(staging.path, target, RENAME_NOREPLACE)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                os.rename(staging.path, target)  # no NOREPLACE here; the lock and the check above stand in
        _fsync_dir(directory)
    return version, target, replaced
