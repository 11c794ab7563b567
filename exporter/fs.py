"""The file-system calls publishing rests on: locks that never follow a link, `renameat2`, fsync.

Linux semantics throughout (flock, renameat2); `exporter.publish` builds the protocol
on them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import platform
import shutil
from pathlib import Path

_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# renameat2 syscall numbers, for a C library without the wrapper (glibc < 2.28).
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "ppc64le": 357, "s390x": 347}
# errno values meaning "this file system or kernel cannot do that rename".
UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def open_nofollow(path: Path, *, create: bool) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    return os.open(path, flags, 0o644)


def same_file(fd: int, path: Path) -> bool:
    try:
        linked = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (linked.st_dev, linked.st_ino)


def try_lock(path: Path) -> int | None:
    """An fd holding `path`'s flock, or None when another process holds it (or it is gone)."""
    try:
        fd = open_nofollow(path, create=False)
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


def remove(path: Path) -> None:
    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


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


def fsync_tree(root: Path) -> None:
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
        fsync_dir(Path(folder))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
