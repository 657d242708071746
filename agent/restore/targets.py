"""Where restored bytes go: a directory (`DirectoryTarget`) or S3 (`S3Target`).

A file moves into place only after every byte verified (temp file, fsync, link or
rename); an object appears only when its single PutObject carried the right SHA-256 or
its multipart upload completed after the last part verified (`upload_verified`, also
used by share). What is already there is never replaced without `overwrite`.

Into S3 an object goes back with what the version held besides its bytes, when recorded
(`object_arguments`): Content-Type, Content-Encoding, Content-Language, Content-Disposition,
Cache-Control, Expires, its user metadata (with the agent's own two keys) and its tags. Not
ACLs, object lock, storage class or the SSE-KMS key: the target bucket's defaults apply.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import errno
import hashlib
import itertools
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import quote, urlencode

import botocore.exceptions
import structlog

from agent.aws import classify, error_code
from agent.errors import BackupAgentError
from agent.records import (
    CONTENT_HEADERS,
    METADATA_MAX_BYTES,
    VersionRecord,
    attributes_of,
    expires_datetime,
    metadata_size,
)
from agent.restore.copies import verified_chunks
from agent.restore.durable import (
    Barriers,
    kept_because,
    of_run,
    rename_noreplace,
    stale_temp,
    temp_name,
)
from agent.restore.plan import Item
from agent.restore.source import event_datetime
from agent.restore.tree import (
    DIRECTORY_FLAGS,
    RestoreRefused,
    TargetTree,
    UnsafePath,
    entry,
    open_regular,
    others_may_write,
    refused_name,
)
from agent.storage.direct import DirectWriter
from agent.storage.volume import READ_CHUNK, WRITEBACK_BYTES, Volume, WritebackAsYouGo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MULTIPART_THRESHOLD = 16 << 20
PART_SIZE = 16 << 20  # preferred: used while it needs no more than MAX_PARTS parts
# S3's multipart limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html):
# part numbers 1 to 10,000; parts of 5 MiB to 5 GiB (the last one may be smaller).
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30
MIB = 1 << 20
AWS_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
SHA256_METADATA = "backup-agent-sha256"
VERSION_METADATA = "backup-agent-version"

log = structlog.get_logger("agent.restore")


@dataclasses.dataclass(frozen=True, slots=True)
class Staged:
    """A verified copy written to `temp` in the directory of `parts`, not yet named."""

    item: Item
    parts: tuple[str, ...]
    temp: str
    inode: tuple[int, int]  # (st_dev, st_ino) of the temp file written


class Status(enum.Enum):
    RESTORED = "restored"
    UNCHANGED = "unchanged"  # the destination already holds exactly these bytes
    PLANNED = "planned"  # --dry-run
    TAKEN = "taken"  # restore --fleet: another member claimed the key (agent/restore/job.py)
    FAILED = "failed"


class Target(Protocol):
    def destination(self, item: Item) -> str: ...
    def check(self, item: Item) -> str | None:
        """For --dry-run: a note about what is already there, or None."""
        ...

    def restore(self, item: Item, on_bytes: Callable[[int], None]) -> Status: ...


RESTORED_FILE_MODE = 0o600  # a restore often runs as root: nothing readable by others
RESTORED_DIR_MODE = 0o700  # unless --mode / --dir-mode say otherwise


@dataclasses.dataclass
class Leftovers:
    """What an aborted restore left in its directories (`DirectoryTarget.left_behind`)."""

    files: list[str] = dataclasses.field(default_factory=list)  # this run's temp files, shown
    unchecked: list[str] = dataclasses.field(default_factory=list)  # directories not read


class DirectoryTarget:
    """Files land at DIR/<escaped key>; nothing is written outside DIR.

    DIR and everything below it is reached by directory descriptor (tree.py): no path below
    DIR is resolved by name, so no symlink there is followed, even one swapped in while the
    restore runs. DIR itself is resolved once, here, and opened on the first write (or check).

    Files are written 0600 (the temp file too, from its first byte) and the directories the
    restore creates 0700, owned by the restoring user; directories that already exist keep
    their mode.
    """

    def __init__(
        self,
        volume: Volume,
        directory: Path,
        *,
        overwrite: bool = False,
        file_mode: int = RESTORED_FILE_MODE,
        dir_mode: int = RESTORED_DIR_MODE,
        barriers: Barriers | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.volume = volume
        self.directory = directory.resolve()  # created on the first write, never by dry runs
        self.overwrite = overwrite
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.tree = TargetTree(self.directory, dir_mode=dir_mode)
        self.barriers = barriers or Barriers()
        self.clock = clock  # the age of another restore's temp files (durable.kept_because)
        self._run = uuid.uuid4().hex[:12]  # temp names of this run: .restore-<run>-<n>.part
        self._serial = itertools.count()
        self._lock = threading.Lock()
        self._cleaned: set[tuple[str, ...]] = set()

    def close(self) -> None:
        """Let go of DIR's descriptor (also done when the target is garbage-collected)."""
        self.tree.close()

    def destination(self, item: Item) -> str:
        return self.tree.shown(self._parts(item))

    def check(self, item: Item) -> str | None:
        """What a restore would meet, found the way the restore walks: nothing followed."""
        parts = self._parts(item)
        try:
            with self.tree.directory(parts[:-1], create=False) as parent:
                if parent is None:
                    return None
                return self._note(parent, parts[-1], item.record)
        except BackupAgentError as exc:
            return f"would fail: {exc}"
        except OSError as exc:
            return f"cannot check: {exc.strerror}"
        except ValueError:
            refused = refused_name(parts, self.tree.shown(parts))
            if refused is None:
                raise
            return f"would fail: {refused}"

    def _note(self, parent: int, name: str, record: VersionRecord) -> str | None:
        found = entry(parent, name)
        if found is None:
            return None
        if stat.S_ISDIR(found.st_mode):
            return "is a directory; would fail"
        if stat.S_ISLNK(found.st_mode):
            what = "is a symlink (never followed)"
            return f"{what}; would be replaced" if self.overwrite else f"{what}; needs --overwrite"
        if _same_file(parent, name, record):
            return "exists with the same content"
        return "exists; would be replaced" if self.overwrite else "exists; needs --overwrite"

    def restore(self, item: Item, on_bytes: Callable[[int], None]) -> Status:
        """One file, durable when this returns (a batch of one: see `stage` and `commit`)."""
        staged = self.stage(item, on_bytes)
        if isinstance(staged, Status):
            return staged
        error = self.commit([staged])[0]
        if error is not None:
            raise error
        return Status.RESTORED

    def stage(
        self, item: Item, on_bytes: Callable[[int], None], *, serial: int | None = None
    ) -> Staged | Status:
        """Write a verified copy of `item` to a temp name beside its destination.

        UNCHANGED if the destination already holds these bytes; RestoreRefused if it holds
        something else (without --overwrite). Nothing is under the final name until
        `commit`; a failure leaves no temp file behind. `serial` names the temp file
        (`temp_name`) instead of this target's counter: a worker process (workers.py) names
        its files by their place in the plan, so that no two processes pick the same name.
        A part of its path the system refuses as a file name is `NameRefused` (not the
        ValueError of os.*, which its callers would not take for one file's failure)."""
        parts = self._parts(item)
        try:
            return self._stage(item, parts, on_bytes, serial)
        except ValueError as exc:
            refused = refused_name(parts, self.tree.shown(parts))
            if refused is None:
                raise
            raise refused from exc

    def _stage(
        self,
        item: Item,
        parts: tuple[str, ...],
        on_bytes: Callable[[int], None],
        serial: int | None,
    ) -> Staged | Status:
        name = parts[-1]  # the path shown in messages is made only for one (tree.shown)
        with self.tree.directory(parts[:-1], create=True) as parent:
            if parent is None:  # pragma: no cover - create=True always yields a directory
                raise UnsafePath(f"{self.tree.shown(parts)}: its directory could not be opened")
            # a directory this run made, writable by no one else, holds only what the run
            # (or root, or the restoring user) put there: no earlier restore's temp files, no
            # file of the same name (each key has its own path, paths.py). So its names are
            # not looked up first (a fifth of a small-file restore's time in the worker
            # processes, where the lookups wait behind the creates in the same directory);
            # a name that appears anyway is met by `commit`, which never replaces one
            # without --overwrite
            fresh = self.tree.made(parts[:-1], parent)
            if not fresh:
                self._clean_once(parent, parts[:-1])
            found = None if fresh else entry(parent, name)
            if found is not None:
                if stat.S_ISDIR(found.st_mode):
                    raise RestoreRefused(f"{self.tree.shown(parts)} is a directory")
                if _same_file(parent, name, item.record):
                    return Status.UNCHANGED
                if not self.overwrite and stat.S_ISLNK(found.st_mode):
                    raise RestoreRefused(
                        f"{self.tree.shown(parts)} is a symlink (never followed); use"
                        " --overwrite to replace the link itself"
                    )
                if not self.overwrite:
                    raise RestoreRefused(
                        f"{self.tree.shown(parts)} exists with other content; use --overwrite"
                    )
            temp = self.temp_name(next(self._serial) if serial is None else serial)
            try:
                inode = self._write_temp(parent, temp, item, on_bytes)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=parent)
                raise
        return Staged(item, parts, temp, inode)

    def prepare(self, items: Sequence[Item], stop: threading.Event | None = None) -> None:
        """Create the target and the directories of `items` now, in this process, and sweep
        the ones that were there (`_clean_once`), before workers.py forks: each child then
        knows which directories this run made (`stage`), and has every directory of the plan
        noted as swept, so that none sweeps one after the parent named files in it (each
        child's note is its own). A directory that cannot be made is left for its files to
        meet, one error each, and swept by no one this run. Once `stop` is set no more are
        made: the files not started will not need them."""
        self._root()
        directories = list(dict.fromkeys(self._parts(item)[:-1] for item in items))
        for directory in directories:
            if stop is not None and stop.is_set():
                with self._lock:  # (no child starts after a stop: noted all the same)
                    self._cleaned.update(directories)
                return
            with (
                contextlib.suppress(BackupAgentError, OSError, ValueError),
                self.tree.directory(directory, create=True) as parent,
            ):
                if parent is not None and not self.tree.made(directory, parent):
                    self._clean_once(parent, directory)
            with self._lock:
                self._cleaned.add(directory)

    def temp_name(self, serial: int) -> str:
        """The temp name of this run's file number `serial` (`.restore-<run>-<serial>.part`)."""
        return temp_name(self._run, serial)

    def commit(self, staged: Sequence[Staged]) -> list[BackupAgentError | OSError | None]:
        """Put staged files under their names, durably: one outcome per file, None if it
        is in place. Bytes first (one syncfs, or the fsyncs done as each was written), then
        the names (link, or rename with --overwrite), then the names' barrier (one syncfs,
        or one fsync per directory touched and per parent of a directory created)."""
        outcomes: list[BackupAgentError | OSError | None] = [None] * len(staged)
        if not staged:
            return outcomes
        try:
            if self.barriers.whole_filesystem:
                self.barriers.sync_filesystem(self._root())
        except OSError as exc:
            self.discard(staged)
            return [exc for _ in staged]
        by_directory: dict[tuple[str, ...], list[int]] = {}
        for index, one in enumerate(staged):
            by_directory.setdefault(one.parts[:-1], []).append(index)
        for directory, indexes in by_directory.items():
            self._publish(directory, [staged[i] for i in indexes], indexes, outcomes)
        try:
            self._name_barrier(by_directory)
        except OSError as exc:
            for index in range(len(staged)):
                if outcomes[index] is None:
                    outcomes[index] = exc
        return outcomes

    def discard(self, staged: Sequence[Staged]) -> None:
        """Remove the temp files of staged files that will not be committed."""
        for one in staged:
            with (
                contextlib.suppress(OSError, BackupAgentError, ValueError),
                self.tree.directory(one.parts[:-1], create=False) as parent,
            ):
                if parent is not None:
                    os.unlink(one.temp, dir_fd=parent)

    def left_behind(self, items: Sequence[Item]) -> Leftovers:
        """This run's temp files still in the directories of `items` (after an abort: what
        the cleanup did not remove), as shown in messages, and the directories that could
        not be looked in (a message must not call those clean). Nothing is created or
        followed."""
        left = Leftovers()
        for directory in dict.fromkeys(self._parts(item)[:-1] for item in items):
            try:
                with self.tree.directory(directory, create=False) as parent:
                    if parent is None:
                        continue
                    with os.scandir(parent) as entries:
                        names = sorted(e.name for e in entries)
            except (OSError, BackupAgentError):
                left.unchecked.append(self.tree.shown(directory))
                continue
            except ValueError:  # a name the system refuses: no such directory can be there
                if refused_name(directory, self.tree.shown(directory)) is None:
                    raise
                continue
            left.files.extend(
                self.tree.shown((*directory, name)) for name in names if of_run(name, self._run)
            )
        return left

    def _publish(
        self,
        directory: tuple[str, ...],
        staged: list[Staged],
        indexes: list[int],
        outcomes: list[BackupAgentError | OSError | None],
    ) -> None:
        try:
            with self.tree.directory(directory, create=False) as parent:
                if parent is None:
                    shown = self.tree.shown(directory)  # moved away since its files were written
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", shown)
                shared = others_may_write(parent)
                for index, one in zip(indexes, staged, strict=True):
                    outcomes[index] = self._name(parent, one, shared=shared)
                if not self.barriers.whole_filesystem:
                    self.barriers.fsync(parent)
        except (BackupAgentError, OSError) as exc:
            for index in indexes:
                if outcomes[index] is None:
                    outcomes[index] = exc

    def _name(
        self, parent: int, one: Staged, *, shared: bool = False
    ) -> BackupAgentError | OSError | None:
        """Put `one`'s temp file under its name. In a directory others may write (`shared`,
        `others_may_write`) another user can swap the temp name's file between the check
        below and the rename or link: the name is looked at again afterwards, and a file
        that is not the one verified is reported, not counted restored."""
        name = one.parts[-1]
        renamed = False  # the temp name is gone with the rename; else it is removed below
        try:
            found = entry(parent, one.temp)  # walked to again: the same file? (gone: link fails)
            if found is not None and (found.st_dev, found.st_ino) != one.inode:
                return RestoreRefused(
                    f"{self.destination(one.item)}: its temp file was moved or replaced; not named"
                )
            if self.overwrite:
                # renameat replaces the name (a symlink there is replaced, not followed)
                os.rename(one.temp, name, src_dir_fd=parent, dst_dir_fd=parent)
                renamed = True
            else:
                try:  # never clobbers a name created meanwhile: renameat2 NOREPLACE, else linkat
                    renamed = rename_noreplace(one.temp, name, parent)
                    if not renamed:
                        os.link(
                            one.temp,
                            name,
                            src_dir_fd=parent,
                            dst_dir_fd=parent,
                            follow_symlinks=False,
                        )
                except FileExistsError:
                    return RestoreRefused(
                        f"{self.destination(one.item)} appeared meanwhile; use --overwrite"
                    )
            if shared:
                named = entry(parent, name)
                if named is None or (named.st_dev, named.st_ino) != one.inode:
                    return RestoreRefused(
                        f"{self.destination(one.item)}: another user replaced the file while it"
                        " was named; what is there now is not the restored bytes"
                    )
            return None
        except OSError as exc:
            return exc
        except ValueError:  # staged in a directory the run made: its name not used till now
            refused = refused_name(one.parts, self.destination(one.item))
            if refused is None:
                raise
            return refused
        finally:
            if not renamed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(one.temp, dir_fd=parent)

    def _name_barrier(self, touched: Mapping[tuple[str, ...], object]) -> None:
        created = self.tree.take_created()
        if self.barriers.whole_filesystem:
            self.barriers.sync_filesystem(self._root())
            return
        done = set(touched)  # fsynced by _publish
        for directory in created:
            if not directory:  # the target itself: its parent is above the tree
                parent = os.open(self.directory.parent, DIRECTORY_FLAGS)
                try:
                    self.barriers.fsync(parent)
                finally:
                    os.close(parent)
                continue
            above = directory[:-1]
            if above in done:
                continue
            with self.tree.directory(above, create=False) as parent_fd:
                if parent_fd is not None:
                    self.barriers.fsync(parent_fd)
                    done.add(above)

    def _root(self) -> int:
        root = self.tree.root(create=True)
        if root is None:  # pragma: no cover - create=True always yields a directory
            raise UnsafePath(f"{self.directory}: could not be opened")
        return root

    def _clean_once(self, parent: int, directory: tuple[str, ...]) -> None:
        """Remove the temp files another restore left in `directory` (a crash mid-restore),
        once per directory per run: only files with exactly a temp name of another run,
        the restoring user's, unchanged for an hour (durable.py `stale_temp`,
        `kept_because`). The others stay, logged (`restore.temp_kept`); they are in no
        restore's way (every run has its own temp names)."""
        with self._lock:
            if directory in self._cleaned:
                return
            self._cleaned.add(directory)
        with os.scandir(parent) as entries:
            names = [e.name for e in entries if stale_temp(e.name, self._run)]
        if not names:
            return
        euid, now = os.geteuid(), self.clock()
        for name in names:
            found = entry(parent, name)
            if found is None:
                continue
            shown = self.tree.shown((*directory, name))
            reason = kept_because(found, euid=euid, now=now)
            if reason is not None:
                log.info("restore.temp_kept", path=shown, reason=reason)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent)
            log.info("restore.stale_temp_removed", path=shown)

    def _parts(self, item: Item) -> tuple[str, ...]:
        if item.placement is None:
            raise ValueError("directory restores need placed items (restore.place)")
        return item.placement.parts

    def _write_temp(
        self, parent: int, temp: str, item: Item, on_bytes: Callable[[int], None]
    ) -> tuple[int, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=parent)
        try:
            created = os.fstat(fd)
            if stat.S_IMODE(created.st_mode) != self.file_mode:  # not already, by the umask
                os.fchmod(fd, self.file_mode)  # exactly the mode asked for, whatever the umask
            # closing(): a failed write stops the read-ahead thread now, not at garbage collection
            with contextlib.closing(verified_chunks(self.volume, item.record)) as chunks:
                if item.record.size is not None and item.size < WRITEBACK_BYTES:
                    for chunk in chunks:  # small: straight to the descriptor, no buffer object
                        _write_all(fd, chunk)
                        on_bytes(len(chunk))
                else:
                    _write_large(fd, chunks, on_bytes)
            stamp = event_datetime(item.record).timestamp()
            os.utime(fd, (stamp, stamp))  # by descriptor: the file just written
            if not self.barriers.whole_filesystem:  # else one syncfs per batch (durable.py)
                self.barriers.fsync(fd)
        finally:
            os.close(fd)
        return created.st_dev, created.st_ino


class S3Target:
    """Bytes go back into S3: the same bucket and key unless told otherwise."""

    def __init__(
        self,
        s3: S3Client,
        volume: Volume,
        *,
        bucket: str | None = None,
        prefix: str = "",
        overwrite: bool = False,
        expected_bucket_owner: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ) -> None:
        self.s3 = s3
        self.volume = volume
        self.bucket = bucket
        self.prefix = prefix
        self.overwrite = overwrite
        self.owner = expected_bucket_owner
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size

    def location(self, item: Item) -> tuple[str, str]:
        return self.bucket or item.record.bucket, self.prefix + item.key

    def destination(self, item: Item) -> str:
        bucket, key = self.location(item)
        return f"s3://{bucket}/{key}"

    def check(self, item: Item) -> str | None:
        return self._conflict(item, self._head(*self.location(item)))

    def restore(self, item: Item, on_bytes: Callable[[int], None]) -> Status:
        bucket, key = self.location(item)
        current = self._head(bucket, key)
        same_bytes = current is not None and self._same_bytes(current, item)
        if current is not None and same_bytes and _same_attributes(current, item.record):
            return Status.UNCHANGED
        conflict = self._conflict(item, current, same_bytes)
        if conflict and not self.overwrite:
            raise RestoreRefused(f"s3://{bucket}/{key} {conflict}")
        upload_verified(
            self.s3,
            self.volume,
            item.record,
            bucket,
            key,
            on_bytes=on_bytes,
            extra={**object_arguments(item.record), **self._owner()},
            metadata=item.record.metadata,
            multipart_threshold=self.multipart_threshold,
            part_size=self.part_size,
        )
        return Status.RESTORED

    def _conflict(
        self, item: Item, current: dict[str, Any] | None, same_bytes: bool | None = None
    ) -> str | None:
        """What the target holds, for --dry-run and for the refusal: any other object is
        replaced only with --overwrite, older or newer (S3's LastModified of a multipart
        upload is when the upload began: age is no safe test). The message said an older
        one "will be replaced" and the restore refused it (a review, 2026-12-02)."""
        if current is None:
            return None
        if same_bytes is None:  # read back once at most (`_holds`): restore passes it on
            same_bytes = self._same_bytes(current, item)
        if same_bytes and _same_attributes(current, item.record):
            return "exists with the same content"
        modified = current.get("LastModified")
        when = f" (modified {modified.isoformat()})" if modified is not None else ""
        if same_bytes:
            what = "holds these bytes with other headers or metadata"
        elif modified is not None and modified > event_datetime(item.record):
            what = f"holds a newer object{when}"
        else:
            what = f"holds an older object{when}"
        return f"{what}; would be replaced" if self.overwrite else f"{what}; needs --overwrite"

    def _head(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            response = cast(
                "dict[str, Any]", self.s3.head_object(Bucket=bucket, Key=key, **self._owner())
            )
        except AWS_ERRORS as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise classify(exc, f"S3 HeadObject s3://{bucket}/{key}") from exc
        return response

    def _owner(self) -> dict[str, Any]:
        return {"ExpectedBucketOwner": self.owner} if self.owner else {}

    def _same_bytes(self, head: dict[str, Any], item: Item) -> bool:
        """Does the object hold the recorded bytes? Only what S3 computed says so: the eTag
        of the very upload that was backed up, or the bytes themselves. Our
        `backup-agent-sha256` metadata (a restore's) is a reason to read them, never proof:
        anyone with s3:PutObject writes metadata, and a tool that replaces an object's bytes
        may keep its metadata (ransomware that did would have every key called unchanged
        and never restored: a review, 2026-12-02)."""
        record = item.record
        size = head.get("ContentLength")
        if record.size is not None and size is not None and size != record.size:
            return False
        etag = str(head.get("ETag", "")).strip('"')
        if record.etag and etag == record.etag.strip('"'):
            return True
        claimed = (head.get("Metadata") or {}).get(SHA256_METADATA)
        if not record.sha256 or claimed != record.sha256 or record.size is None:
            return False
        return self._holds(*self.location(item), head.get("ETag"), record.sha256, record.size)

    def _holds(self, bucket: str, key: str, etag: str | None, sha256: str, size: int) -> bool:
        """Read the object HeadObject described (If-Match its eTag: a newer one fails) and
        compare its SHA-256; never more than `size` + 1 bytes are read."""
        condition: dict[str, Any] = {"IfMatch": etag} if etag else {}
        digest, read = hashlib.sha256(), 0
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key, **condition, **self._owner())["Body"]
            try:
                for chunk in body.iter_chunks(READ_CHUNK):
                    read += len(chunk)
                    if read > size:
                        return False
                    digest.update(chunk)
            finally:
                body.close()
        except AWS_ERRORS as exc:
            if error_code(exc) in ("412", "PreconditionFailed", "404", "NoSuchKey", "NotFound"):
                return False  # replaced or deleted since HeadObject: not these bytes
            raise classify(exc, f"S3 GetObject s3://{bucket}/{key}") from exc
        return read == size and digest.hexdigest() == sha256


def _same_attributes(head: dict[str, Any], record: VersionRecord) -> bool:
    """Does the object carry the recorded headers and user metadata? (A record made before
    they were recorded says nothing about them; tags are not compared: HeadObject has none.)"""
    if record.metadata is None:
        return True
    held = dataclasses.replace(record, **attributes_of(head))
    return _headers_and_users(held) == _headers_and_users(record)


def _headers_and_users(record: VersionRecord) -> tuple[dict[str, Any], dict[str, str]]:
    headers = {k: v for k, v in object_arguments(record).items() if k != "Tagging"}
    ours = (SHA256_METADATA, VERSION_METADATA)
    return headers, {k: v for k, v in (record.metadata or {}).items() if k not in ours}


def object_arguments(record: VersionRecord) -> dict[str, Any]:
    """What the version held besides its bytes, as PutObject / CreateMultipartUpload
    arguments: the recorded content headers, and its tags as the URL-encoded ``k=v&k2=v2``
    of the x-amz-tagging header (which needs s3:PutObjectTagging besides s3:PutObject;
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html). User metadata goes
    through `upload_verified`'s `metadata`, merged with the agent's own keys."""
    found: dict[str, Any] = {}
    for name, parameter in CONTENT_HEADERS.items():
        value = expires_datetime(record) if name == "expires" else getattr(record, name)
        if value is not None:
            found[parameter] = value
    if record.tags:
        found["Tagging"] = urlencode(record.tags, quote_via=quote)
    return found


def object_metadata(record: VersionRecord, user: Mapping[str, str] | None) -> dict[str, str]:
    """The object's own user metadata and the agent's `backup-agent-sha256` (the restore's
    "already there" check) and `backup-agent-version` (which version it came from), which win
    a clash. S3 refuses more than 2 KB of metadata in all: the object's own comes first, and
    an agent key that would not fit is left out."""
    merged = dict(user or {})
    ours = {
        SHA256_METADATA: record.sha256 or "",
        VERSION_METADATA: record.version_id or record.version_token,
    }
    for name, value in ours.items():
        candidate = {**merged, name: value}
        if metadata_size(candidate) <= METADATA_MAX_BYTES:
            merged = candidate
    return merged


def upload_verified(
    s3: S3Client,
    volume: Volume,
    record: VersionRecord,
    bucket: str,
    key: str,
    *,
    on_bytes: Callable[[int], None] = lambda _n: None,
    extra: dict[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    part_size: int = PART_SIZE,
) -> None:
    """Put a stored version into S3; the object appears only if its SHA-256 checked out.

    Small objects are read whole and sent in one PutObject with their SHA-256 checksum;
    large ones stream as a multipart upload (one part in memory at a time) that is
    completed only after the last byte verified, and aborted otherwise. `extra` goes to
    the PutObject or CreateMultipartUpload as it is (headers, Tagging, the owner);
    `metadata` is user metadata, merged with the agent's own (`object_metadata`).
    """
    arguments: dict[str, Any] = {
        "Bucket": bucket,
        "Key": key,
        "Metadata": object_metadata(record, metadata),
        **(extra or {}),
    }
    chunks = verified_chunks(volume, record)
    what = f"S3 upload to s3://{bucket}/{key}"
    if "Tagging" in arguments:
        what += " with its tags (s3:PutObject and s3:PutObjectTagging)"
    if (record.size or 0) <= multipart_threshold:
        body = b"".join(chunks)  # raises before anything is sent if the copy is bad
        checksum = base64.b64encode(bytes.fromhex(record.sha256 or "")).decode()
        try:
            s3.put_object(Body=body, ChecksumSHA256=checksum, **arguments)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, what) from exc
        on_bytes(len(body))
        return
    with contextlib.closing(chunks):  # a failed part stops the read-ahead thread at once
        part = part_size_for(record.size or 0, part_size)
        _multipart(s3, chunks, arguments, part, on_bytes, what)


def _multipart(
    s3: S3Client,
    chunks: Iterator[bytes],
    arguments: dict[str, Any],
    part_size: int,
    on_bytes: Callable[[int], None],
    what: str,
) -> None:
    try:
        upload_id = s3.create_multipart_upload(**arguments)["UploadId"]
    except AWS_ERRORS as exc:
        raise classify(exc, what) from exc
    target = {"Bucket": arguments["Bucket"], "Key": arguments["Key"], "UploadId": upload_id}
    owner = {k: v for k, v in arguments.items() if k == "ExpectedBucketOwner"}
    try:
        parts: list[CompletedPartTypeDef] = []
        pending = bytearray()
        number = 1
        while data := read_exactly(chunks, part_size, pending):
            etag = s3.upload_part(PartNumber=number, Body=data, **target, **owner)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
            on_bytes(len(data))
            number += 1
        s3.complete_multipart_upload(MultipartUpload={"Parts": parts}, **target, **owner)
    except BaseException as exc:
        with contextlib.suppress(*AWS_ERRORS):
            s3.abort_multipart_upload(**target, **owner)
        if isinstance(exc, AWS_ERRORS):
            raise classify(exc, what) from exc
        raise


def part_size_for(size: int, preferred: int = PART_SIZE) -> int:
    """The part size for a multipart upload of `size` bytes: `preferred` unless that needs
    more than MAX_PARTS parts, then the smallest whole MiB that fits in MAX_PARTS; always
    within MIN_PART_SIZE..MAX_PART_SIZE. (A fixed 16 MiB failed at part 10,001: 156.25 GiB.)"""
    floor = max(MIN_PART_SIZE, min(preferred, MAX_PART_SIZE))
    needed = -(-size // MAX_PARTS)  # ceiling division
    part = max(floor, -(-needed // MIB) * MIB)
    if part > MAX_PART_SIZE:
        raise BackupAgentError(
            f"{size} bytes do not fit in {MAX_PARTS} parts of at most {MAX_PART_SIZE} bytes"
        )
    return part


def read_exactly(chunks: Iterator[bytes], size: int, pending: bytearray) -> bytes:
    """Up to `size` bytes from `chunks` (fewer only at the end), carrying the rest over."""
    while len(pending) < size:
        try:
            pending.extend(next(chunks))
        except StopIteration:
            break
    out = bytes(pending[:size])
    del pending[:size]
    return out


def _same_file(directory: int, name: str, record: VersionRecord) -> bool:
    """A regular file (not a symlink, never followed) already holding exactly the recorded
    bytes; read through the descriptor whose type was checked."""
    fd = open_regular(directory, name)
    if fd is None:
        return False
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == record.sha256


def _write_large(fd: int, chunks: Iterator[bytes], on_bytes: Callable[[int], None]) -> None:
    """A large file's bytes straight to the disk (storage/direct.py: no page cache to copy
    into and write back, ~0.3 CPU-seconds per GiB of writing instead of ~1.9); where the
    filesystem has no direct I/O, through the page cache with its writeback started as it
    goes. Either way the caller's fsync or syncfs is what makes the file durable."""
    direct = DirectWriter.open(fd)
    if direct is not None:
        with direct:
            for chunk in chunks:
                direct.write(chunk)
                on_bytes(len(chunk))
        return
    with os.fdopen(fd, "wb", closefd=False) as sink:
        writer = WritebackAsYouGo(sink)  # the fsync then waits for the tail only
        for chunk in chunks:
            writer.write(chunk)
            on_bytes(len(chunk))


def _write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
