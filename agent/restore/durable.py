"""How a restore makes files durable: per batch, not per file.

A file restored into a directory is durable when its bytes and its name are on disk. Doing
that per file (fsync the file, link it, fsync its directory) costs two disk flushes per
file: 349 small files/s where `zstd -d` writes 15,000 (docs/benchmarks.md). A batch of
files needs the same two barriers once:

1. the bytes: every file of the batch is written to a temp name (`.restore-<run>-*.part`),
   then one `syncfs` of the target's filesystem (Linux) makes all their bytes durable; where
   `syncfs` is missing each temp file is fsynced as it is written;
2. the names: each temp file is linked (or renamed, with --overwrite) to its name, then one
   more `syncfs` — or, without it, one fsync of each directory the batch touched and of the
   parent of each directory the restore created.

A name is made only after its bytes are durable, so a crash at any moment leaves complete,
verified files under their names and, at worst, temp names; a later restore into the same
directories removes those (`stale_temp`: exactly this code's temp names, files of the
restoring user, unchanged for `STALE_AFTER`). Since Linux 5.8 `syncfs` reports a write error
on the filesystem since the descriptor was opened, as fsync does for its file.

`syncfs` writes out every dirty page of the filesystem, other programs' too: on a target
filesystem shared with heavy writers a batch's flush costs more than its own files' fsyncs
would. Measured here (2 shared cores, ext4 on a virtual disk, 2,000 files of 4 KiB through
`backup-restore restore --offline --all`): 4.0-4.4 s before, 3.0 s with batches.

`Barriers` is the seam: tests count the flushes through it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import sys
from collections.abc import Callable

from agent.storage import syscalls

TEMP_PREFIX = ".restore-"
TEMP_SUFFIX = ".part"
# Exactly the temp names this code makes, `.restore-<run>-<serial>.part` (`temp_name`: the run
# is 12 hex digits of a uuid4, targets.py; the serial the run's counter, or 2**40 + a file's
# place in the plan in a worker process, workers.py), and the `.restore-<uuid4 hex>.part` of
# the code before batches (6f29a41, 2026-12-01). Nothing else: `.restore-notes.part` is a
# user's file. Key parts of this form are escaped (paths.py), so no restored file has one.
_TEMP_NAME = re.compile(r"\.restore-(?:[0-9a-f]{12}-(?:0|[1-9][0-9]*)|[0-9a-f]{32})\.part")
# A temp file is left for a crashed restore's only once nothing changed it for this long: a
# live restore changes its temp file (st_ctime: the write, the chmod, the utime that sets its
# mtime to the object's event time) and names it within its batch, seconds to minutes (a
# batch holds at most 512 MiB, and worker processes stage one batch ahead). An hour leaves a
# restore into the same directory at the same time alone, unless it stalls (stopped with
# Ctrl-Z or SIGSTOP) for longer; then its files that lost their temp file fail, not found.
STALE_AFTER = 3600.0


_SYNCFS = syscalls.SYNCFS

RENAME_NOREPLACE = 1  # linux/fs.h: renameat2 fails with EEXIST instead of replacing


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
# errnos saying renameat2(RENAME_NOREPLACE) is not available here (old kernel, or a
# filesystem without it): the caller links and unlinks instead
_NO_RENAMEAT2 = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def rename_noreplace(source: str, name: str, directory: int) -> bool:
    """Rename `source` to `name`, both in `directory` (a descriptor: nothing resolved above
    it, a symlink at `name` is a name like any other), only if `name` does not exist:
    FileExistsError if it does. One directory update where link + unlink are two. ValueError,
    as from os.rename, for a name the system cannot take (a NUL byte, which ctypes would
    pass on as the end of the name; a character the filesystem's encoding cannot hold).

    False if renameat2(RENAME_NOREPLACE) is not available (then nothing was done)."""
    if _RENAMEAT2 is None:
        return False
    encoded = os.fsencode(source), os.fsencode(name)
    if any(b"\0" in one for one in encoded):  # C would cut the name there: refused as os.* do
        raise ValueError("embedded null byte")
    if _RENAMEAT2(directory, encoded[0], directory, encoded[1], RENAME_NOREPLACE):
        number = ctypes.get_errno()
        if number in _NO_RENAMEAT2:
            return False
        raise OSError(number, os.strerror(number), name)
    return True


class Barriers:
    """The disk flushes of a restore. `filesystem` is None where syncfs is missing."""

    def __init__(self, *, use_syncfs: bool = True) -> None:
        self._syncfs = _SYNCFS if use_syncfs else None

    @property
    def whole_filesystem(self) -> bool:
        return self._syncfs is not None

    def sync_filesystem(self, fd: int) -> None:
        """Everything written to the filesystem holding `fd` is on disk (syncfs(2))."""
        syscalls.syncfs(fd, self._syncfs)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)


def temp_name(run: str, serial: int) -> str:
    return f"{TEMP_PREFIX}{run}-{serial}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """Whether `name` is exactly of the form of a restore's temp name (`_TEMP_NAME`)."""
    return _TEMP_NAME.fullmatch(name) is not None


def of_run(name: str, run: str) -> bool:
    """Whether `name` is a temp name of the restore whose run id is `run`."""
    return is_temp_name(name) and name.startswith(f"{TEMP_PREFIX}{run}-")


def stale_temp(name: str, run: str) -> bool:
    """Whether `name` is a temp name of another restore than `run` (a crash's, or what an
    interrupted cleanup left): removed if `kept_because` finds no reason to keep it."""
    return is_temp_name(name) and not of_run(name, run)


def kept_because(found: os.stat_result, *, euid: int, now: float) -> str | None:
    """Why a restore running as `euid` at `now` leaves another restore's temp file (`found`,
    not followed) where it is; None if it removes it: a regular file of the restoring user
    (never another user's file) that nothing changed for `STALE_AFTER` seconds (st_ctime:
    the restore sets the mtime itself), so no restore still running writes or names it."""
    if not stat.S_ISREG(found.st_mode):
        return "not a regular file"
    if found.st_uid != euid:
        return "another user's file"
    if now - found.st_ctime < STALE_AFTER:
        return "changed within the hour: a restore may still be writing it"
    return None
