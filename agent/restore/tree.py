"""The restore directory, walked by directory file descriptors only.

A restore runs as root into directories other users can write. Checking a path and then
opening it by name lets such a user swap a directory for a symlink in between and send
root's write anywhere; so no path below the target directory is ever resolved by name:

* the target directory is reached from `/` one component at a time, each `O_NOFOLLOW`
  relative to the one above (missing ones made with mkdirat), and that descriptor is
  held for the whole restore (`TargetTree.root`);
* each component below it is opened relative to its parent's descriptor with
  `O_DIRECTORY|O_NOFOLLOW` (openat) and created with mkdirat when missing
  (`TargetTree.directory`);
* files are looked at (fstatat without following), read (`open_regular`), created,
  linked and renamed relative to the descriptor of their directory, which is held until
  its fsync (targets.py).

A symlink met anywhere below the target — planted beforehand or swapped in at any moment —
fails that step (`UnsafePath`); it is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import structlog

from agent.errors import BackupAgentError

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# the target's ancestors: walked through (openat, mkdirat), never read, so no read permission
_SEARCH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Not a directory / a symlink met with O_NOFOLLOW (Linux says ENOTDIR with O_DIRECTORY).
_BLOCKED = (errno.ENOTDIR, errno.ELOOP)

log = structlog.get_logger("agent.restore")


class RestoreRefused(BackupAgentError):
    """The destination holds something the restore must not replace."""


class UnsafePath(BackupAgentError):
    """A path under the restore directory is a symlink or not a directory."""


class NameRefused(BackupAgentError):
    """A part of a path the system refuses as a file name (os.* raised ValueError)."""


def refused_name(parts: tuple[str, ...], shown: str) -> NameRefused | None:
    """Why the system refuses a part of `parts` as a file name, as os.* would (a NUL byte,
    or a character the filesystem's encoding cannot hold), for the path `shown`; None if it
    takes them all. Asked only once a ValueError was raised: no cost on the way."""
    for part in parts:
        try:
            if b"\0" in os.fsencode(part):
                raise ValueError("embedded null byte")
        except ValueError as exc:
            return NameRefused(f"{shown}: cannot be a file name here ({exc})")
    return None


class TargetTree:
    """The target directory and the directories below it, opened by descriptor.

    `root` opens the target directory once and keeps the descriptor until `close` (or
    until the tree is garbage-collected); everything below is reached from it.
    """

    def __init__(self, root: Path, *, dir_mode: int) -> None:
        self.path = root
        self.dir_mode = dir_mode
        self._shown_root = str(root)
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[[int], TargetTree] | None = None
        self._created: list[tuple[str, ...]] = []  # directories made, () for the target itself
        # every directory this tree made, kept: its (st_dev, st_ino), so that a directory put
        # at its path later (by someone who can write the one above) is not taken for it
        self._made: dict[tuple[str, ...], tuple[int, int]] = {}
        self._making: set[tuple[str, ...]] = set()  # being made by a thread (`_step`)
        self._making_lock = threading.Lock()

    def root(self, *, create: bool) -> int | None:
        """The descriptor of the target directory; None if it does not exist and not
        `create`. Created with its missing parents (the new target directory itself gets
        `dir_mode`); a symlink or a file there is refused."""
        with self._lock:
            if self._fd is None:
                fd = self._open_root(create=create)
                if fd is None:
                    return None
                self._fd = fd
                self._finalizer = weakref.finalize(self, os.close, fd)
            return self._fd

    def close(self) -> None:
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()  # closes the descriptor once
            self._fd = None
            self._finalizer = None

    @contextlib.contextmanager
    def directory(self, parts: tuple[str, ...], *, create: bool) -> Iterator[int | None]:
        """The descriptor of the directory `parts` below the target, open while in the block.

        Missing directories are created (0700, then exactly `dir_mode`) when `create`, else
        the block gets None; one swapped for another directory before it was opened keeps
        its mode and is not "made" (`_just_made`). A symlink is `UnsafePath`, a file
        `RestoreRefused`.
        """
        current = self.root(create=create)
        if current is None:
            yield None
            return
        owned = False  # the root descriptor stays open; the ones opened here are closed
        try:
            for depth, part in enumerate(parts, start=1):
                step = self._step(current, part, parts[:depth], create=create)
                if owned:
                    os.close(current)
                    owned = False
                if step is None:
                    yield None
                    return
                current, owned = step, True
            yield current
        finally:
            if owned:
                os.close(current)

    def made(self, parts: tuple[str, ...], fd: int) -> bool:
        """Whether `fd`, open at `parts`, is the very directory this tree created there
        (mkdirat by this run, found owned by the restoring user and empty when opened, then
        given `dir_mode`) and `dir_mode` lets no group or other user write it: then only the
        run, root or the restoring user can have put a name in it. A directory moved in at
        that path since is another inode, so not "made". (targets.py never replaces a name
        without --overwrite either way: this only spares the lookups.)"""
        if self.dir_mode & 0o022:
            return False
        made = self._made.get(parts)
        return made is not None and _identity(fd) == made

    def take_created(self) -> list[tuple[str, ...]]:
        """The directories created since the last call (their entries need a parent fsync
        to be durable), `()` standing for the target directory itself."""
        with self._lock:
            created, self._created = self._created, []
        return created

    def shown(self, parts: tuple[str, ...]) -> str:
        """A path for messages only: never opened. (Parts are single clean components,
        paths.py: a string join gives what Path.joinpath would, at a fraction of its cost,
        which was 3% of a restore of small files.)"""
        return os.path.join(self._shown_root, *parts)

    def _open_root(self, *, create: bool) -> int | None:
        """Walk to the target from `/` by descriptor, each component opened `O_NOFOLLOW`
        relative to the one above (`O_PATH`: searching them is enough, as for a path) and,
        when `create`, made if missing: ancestors as `mkdir -p` makes them (the umask's
        mode), the target by `_make`. The path was resolved once (DirectoryTarget): a
        symlink met now was put there since, by someone who may write an ancestor, and is
        refused rather than followed."""
        anchor, names = (
            (self.path.anchor, self.path.parts[1:])
            if self.path.is_absolute()
            else (".", self.path.parts)
        )
        if not names:  # the target is "/" (or ".")
            return os.open(anchor, DIRECTORY_FLAGS)
        *ancestors, last = names
        fd = os.open(anchor, _SEARCH_FLAGS)
        try:
            for depth, name in enumerate(ancestors, start=1):
                shown = os.path.join(anchor, *names[:depth])
                try:
                    below = _open_directory(fd, name, shown, _SEARCH_FLAGS)
                except FileNotFoundError:
                    if not create:
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=fd)
                    below = _open_directory(fd, name, shown, _SEARCH_FLAGS)
                os.close(fd)
                fd = below
            try:
                return _open_directory(fd, last, str(self.path))
            except FileNotFoundError:
                if not create:
                    return None
            target, made = _make(fd, last, str(self.path), self.dir_mode)
            if made:
                self._created.append(())  # under self._lock (root holds it)
                self._made[()] = _identity(target)
            return target
        finally:
            os.close(fd)

    def _step(self, parent: int, name: str, parts: tuple[str, ...], *, create: bool) -> int | None:
        """Open `name` in `parent` as a directory, never through a symlink."""
        try:
            fd = _open_directory(parent, name, self.shown(parts))
        except FileNotFoundError:
            if not create:
                return None
        else:
            self._wait_if_making(parts)
            return fd
        with self._making_lock:  # one at a time: see `_wait_if_making`
            self._making.add(parts)
            try:
                fd, made = _make(parent, name, self.shown(parts), self.dir_mode)
                if made:
                    with self._lock:
                        self._created.append(parts)
                        self._made[parts] = _identity(fd)
            finally:
                self._making.discard(parts)
        return fd

    def _wait_if_making(self, parts: tuple[str, ...]) -> None:
        """Wait while another thread of this run makes the directory `parts`, just opened
        here: its check that it opened the directory it made (`_just_made`) must not see
        this thread's files in it."""
        if self._making and parts in self._making:
            with self._making_lock:
                pass


def _identity(fd: int) -> tuple[int, int]:
    found = os.fstat(fd)
    return found.st_dev, found.st_ino


def _make(parent: int, name: str, shown: str, mode: int) -> tuple[int, bool]:
    """Make the directory `name` in `parent` if it is missing (mkdirat, 0700) and open it:
    its descriptor, and whether it is the directory made here (`_just_made`; then it has
    exactly `mode`, whatever the umask). False: it was there, or was put there since."""
    made = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
        made = True
    fd = _open_directory(parent, name, shown)
    try:
        if made and _just_made(fd, shown):
            os.fchmod(fd, mode)
            return fd, True
    except BaseException:
        os.close(fd)
        raise
    return fd, False


def _just_made(fd: int, shown: str) -> bool:
    """Whether `fd`, opened at the name this process has just made with mkdirat(0700), is
    that directory: owned by the effective uid, no permission beyond the owner's (mkdirat's
    0700 less the umask; setgid comes from a setgid parent) and empty. Someone who may
    write the parent can rename the new directory away and move another one to its name
    before the open; that one is left as it is (no fchmod, not "made") and logged. (Not
    st_nlink == 2: btrfs counts 1 for every directory.)"""
    found = os.fstat(fd)
    mode = stat.S_IMODE(found.st_mode)
    if found.st_uid == os.geteuid() and not mode & ~(0o700 | stat.S_ISGID):
        with os.scandir(fd) as entries:
            if next(entries, None) is None:
                return True
    log.warning(
        "restore.directory_replaced",
        path=shown,
        uid=found.st_uid,
        mode=f"{mode:04o}",
        note="not the directory the restore just made: left as it is",
    )
    return False


def _open_directory(parent: int, name: str, shown: str, flags: int = DIRECTORY_FLAGS) -> int:
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in _BLOCKED:
            raise
        raise _blocked(entry(parent, name), shown) from None


def _blocked(found: os.stat_result | None, shown: str) -> BackupAgentError:
    if found is None or stat.S_ISDIR(found.st_mode):  # not what the open met a moment ago
        return UnsafePath(f"{shown} changed while it was opened; refusing to go on")
    if stat.S_ISLNK(found.st_mode):
        return UnsafePath(f"{shown} is a symlink; refusing to follow it")
    return RestoreRefused(f"{shown} is a file, where a directory is needed")


def others_may_write(directory: int) -> bool:
    """Whether a user other than this process's may rename or replace names in `directory`
    by its mode bits: it belongs to another user (its owner may rename any entry, sticky or
    not), or its group or others may write it and it is not sticky (in a sticky directory,
    the mode of /tmp, only a file's owner or the directory's may rename or remove it).
    Filesystems whose permissions are not the mode bits (FUSE without default_permissions,
    CIFS with noperm) are not judged here."""
    found = os.fstat(directory)
    if found.st_uid != os.geteuid():
        return True
    return bool(found.st_mode & 0o022) and not found.st_mode & stat.S_ISVTX


def entry(directory: int, name: str) -> os.stat_result | None:
    """What `name` in `directory` is (a symlink is described, not followed); None if absent."""
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_regular(directory: int, name: str) -> int | None:
    """A read descriptor of `name` in `directory` if it is a regular file, else None.

    Never follows a symlink, never blocks on a FIFO swapped in (O_NONBLOCK), and checks the
    file type on the open descriptor itself, so what is read is what was checked."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=directory)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, *_BLOCKED):
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd
