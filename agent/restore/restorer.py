"""Restores: plan what to bring back, then write it — to a directory or into S3 — verified.

Planning (`plan`) turns a scope (one key, a prefix, everything) and a `Selector` into
items, each a stored version and where it goes. Executing (`Restorer.run`) streams each
copy off the volume in a thread pool. Every byte is hashed on the way; only when the
SHA-256 and size match the record does the file move into place (temp file, fsync,
link/rename) or the multipart upload complete. A corrupt or missing copy fails its item
with the key and version named, and the other items carry on.

`verify` decompresses stored copies and checks them against the records, without
writing anything.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import math
import os
import random
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import botocore.exceptions
import structlog
import zstandard

from agent.aws import classify, error_code
from agent.errors import BackupAgentError, IntegrityError
from agent.records import VersionRecord
from agent.restore.paths import Placement, place_keys
from agent.restore.source import Choice, RestoreSource, Selector, event_datetime, select
from agent.storage import readahead
from agent.storage.volume import READ_CHUNK, Volume, WritebackAsYouGo, fsync_directory

log = structlog.get_logger("agent.restore")

MULTIPART_THRESHOLD = 16 << 20
PART_SIZE = 16 << 20
AWS_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
SHA256_METADATA = "backup-agent-sha256"
VERSION_METADATA = "backup-agent-version"


class RestoreRefused(BackupAgentError):
    """The destination holds something the restore must not replace."""


class UnsafePath(BackupAgentError):
    """A path under the restore directory is a symlink or not a directory."""


# -- planning ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """What to restore: exactly one of `key`, `prefix` (may be ""), or everything."""

    key: str | None = None
    prefix: str | None = None

    @classmethod
    def everything(cls) -> Scope:
        return cls(prefix="")


@dataclass(frozen=True, slots=True)
class Item:
    """One stored version to restore, and where it lands (`placement` for directories)."""

    record: VersionRecord
    deleted_in_s3: bool = False
    placement: Placement | None = None

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def size(self) -> int:
        return self.record.size or 0


@dataclass(frozen=True, slots=True)
class Plan:
    items: list[Item]
    skipped: list[Choice] = field(default_factory=list)  # keys with no version to restore
    missing: list[Choice] = field(default_factory=list)  # asked for by name, not found

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.items)

    @property
    def renamed(self) -> list[Item]:
        return [i for i in self.items if i.placement is not None and i.placement.renamed]


def plan(source: RestoreSource, bucket: str, scope: Scope, selector: Selector) -> Plan:
    """Choose a version of every key in scope; the keys left out say why."""
    choices = list(_choices(source, bucket, scope, selector))
    items = [Item(c.record, c.deleted_in_s3) for c in choices if c.record is not None]
    unchosen = [c for c in choices if c.record is None]
    if scope.key is not None:
        return Plan(items, missing=unchosen)
    return Plan(items, skipped=unchosen)


def place(items_plan: Plan) -> Plan:
    """Give every item a collision-free, escaped path relative to the restore directory."""
    placements = place_keys(item.key for item in items_plan.items)
    placed = [Item(i.record, i.deleted_in_s3, placements[i.key]) for i in items_plan.items]
    return Plan(placed, items_plan.skipped, items_plan.missing)


def _choices(
    source: RestoreSource, bucket: str, scope: Scope, selector: Selector
) -> Iterator[Choice]:
    if scope.key is not None:
        yield select(scope.key, source.history(bucket, scope.key), selector)
        return
    for latest in source.latest(bucket, scope.prefix or ""):
        if latest.deleted and not (selector.include_deleted or selector.needs_history):
            yield Choice(latest.key, None, f"deleted in S3 at {latest.event_time}", True)
        elif latest.deleted or selector.needs_history:
            yield select(latest.key, source.history(bucket, latest.key), selector)
        else:
            yield Choice(latest.key, latest)


# -- reading a copy, verified ----------------------------------------------------------


def describe(record: VersionRecord) -> str:
    version = record.version_id or record.version_token
    return f"s3://{record.bucket}/{record.key} (version {version})"


class CorruptCopy(IntegrityError):
    """A stored copy is missing or does not hold the recorded bytes."""

    def __init__(self, record: VersionRecord, reason: str) -> None:
        self.record = record
        self.reason = reason
        super().__init__(f"{describe(record)}: {reason}")


def verified_chunks(
    volume: Volume, record: VersionRecord, chunk: int = READ_CHUNK
) -> Generator[bytes, None, None]:
    """The original bytes of a stored version; CorruptCopy at the end if they are wrong.

    Callers commit nothing until the iterator is exhausted without an error.
    """
    if not record.sha256:
        raise CorruptCopy(record, "the record names no stored copy")
    digest = hashlib.sha256()
    total = 0
    try:
        with volume.open_copy(record.sha256) as reader:
            # A large copy decompresses ahead in its own thread: hash and write overlap.
            for data in readahead.chunks(lambda: reader.read(chunk), record.size):
                digest.update(data)
                total += len(data)
                yield data
    except FileNotFoundError:
        raise CorruptCopy(record, f"stored copy {record.sha256} is missing") from None
    except ValueError as exc:  # the record's sha256 is not a digest at all
        raise CorruptCopy(record, f"the record names no valid copy ({exc})") from None
    except zstandard.ZstdError as exc:
        raise CorruptCopy(record, f"stored copy {record.sha256} is corrupt ({exc})") from None
    if digest.hexdigest() != record.sha256:
        raise CorruptCopy(
            record,
            f"stored copy {record.sha256} is corrupt (its bytes hash to {digest.hexdigest()})",
        )
    if record.size is not None and total != record.size:
        raise CorruptCopy(
            record, f"stored copy {record.sha256} holds {total} bytes, expected {record.size}"
        )


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


# -- results and progress ------------------------------------------------------------


class Status(enum.Enum):
    RESTORED = "restored"
    UNCHANGED = "unchanged"  # the destination already holds exactly these bytes
    PLANNED = "planned"  # --dry-run
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ItemResult:
    item: Item
    destination: str
    status: Status
    bytes: int = 0
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        record = self.item.record
        placement = self.item.placement
        return {
            "type": "file",
            "status": self.status.value,
            "bucket": record.bucket,
            "key": record.key,
            "version_id": record.version_id,
            "version_token": record.version_token,
            "sha256": record.sha256,
            "size": record.size,
            "destination": self.destination,
            "renamed": bool(placement and placement.renamed),
            "deleted_in_s3": self.item.deleted_in_s3,
            "bytes": self.bytes,
            "error": self.error,
            "note": self.note,
        }


class Progress(Protocol):
    def start(self, files: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finished(self, result: ItemResult) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, files: int, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finished(self, result: ItemResult) -> None:
        pass

    def close(self) -> None:
        pass


# -- targets -------------------------------------------------------------------------


class Target(Protocol):
    def destination(self, item: Item) -> str: ...
    def check(self, item: Item) -> str | None:
        """For --dry-run: a note about what is already there, or None."""
        ...

    def restore(self, item: Item, on_bytes: Callable[[int], None]) -> Status: ...


class DirectoryTarget:
    """Files land at DIR/<escaped key>; nothing is written outside DIR."""

    def __init__(self, volume: Volume, directory: Path, *, overwrite: bool = False) -> None:
        self.volume = volume
        self.directory = directory.resolve()  # created on the first write, never by dry runs
        self.overwrite = overwrite

    def destination(self, item: Item) -> str:
        return str(self.directory.joinpath(*self._parts(item)))

    def check(self, item: Item) -> str | None:
        path = Path(self.destination(item))
        if not os.path.lexists(path):
            return None
        if _same_file(path, item.record):
            return "exists with the same content"
        return "exists; would be replaced" if self.overwrite else "exists; needs --overwrite"

    def restore(self, item: Item, on_bytes: Callable[[int], None]) -> Status:
        parts = self._parts(item)
        parent = self._make_parents(parts[:-1])
        final = parent / parts[-1]
        if os.path.lexists(final):
            if final.is_dir() and not final.is_symlink():
                raise RestoreRefused(f"{final} is a directory")
            if _same_file(final, item.record):
                return Status.UNCHANGED
            if not self.overwrite:
                raise RestoreRefused(f"{final} exists with other content; use --overwrite")
        temp = parent / f".restore-{uuid.uuid4().hex}.part"
        try:
            self._write_temp(temp, item, on_bytes)
            if self.overwrite:
                os.replace(temp, final)
            else:
                try:
                    os.link(temp, final)  # never clobbers a file created meanwhile
                except FileExistsError:
                    raise RestoreRefused(f"{final} appeared meanwhile; use --overwrite") from None
            fsync_directory(parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return Status.RESTORED

    def _parts(self, item: Item) -> tuple[str, ...]:
        if item.placement is None:
            raise ValueError("directory restores need placed items (restore.place)")
        return item.placement.parts

    def _make_parents(self, parts: tuple[str, ...]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        current = self.directory
        for part in parts:
            current = current / part
            with contextlib.suppress(FileExistsError):
                current.mkdir()
            if current.is_symlink():
                raise UnsafePath(f"{current} is a symlink; refusing to follow it")
            if not current.is_dir():
                raise RestoreRefused(f"{current} is a file, where a directory is needed")
        return current

    def _write_temp(self, temp: Path, item: Item, on_bytes: Callable[[int], None]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o644)
        with os.fdopen(fd, "wb") as sink:
            writer = WritebackAsYouGo(sink)  # the fsync below then waits only for the tail
            # closing(): a failed write stops the read-ahead thread now, not at garbage collection
            with contextlib.closing(verified_chunks(self.volume, item.record)) as chunks:
                for chunk in chunks:
                    writer.write(chunk)
                    on_bytes(len(chunk))
            sink.flush()
            os.fsync(sink.fileno())
        stamp = event_datetime(item.record).timestamp()
        os.utime(temp, (stamp, stamp))


class S3Target:
    """Bytes go back into S3: the same bucket and key unless told otherwise."""

    def __init__(
        self,
        s3: Any,
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
        if current is not None and _same_content(current, item.record):
            return Status.UNCHANGED
        conflict = self._conflict(item, current)
        if conflict and not self.overwrite:
            raise RestoreRefused(f"s3://{bucket}/{key} {conflict}")
        upload_verified(
            self.s3,
            self.volume,
            item.record,
            bucket,
            key,
            on_bytes=on_bytes,
            extra=self._owner(),
            multipart_threshold=self.multipart_threshold,
            part_size=self.part_size,
        )
        return Status.RESTORED

    def _conflict(self, item: Item, current: dict[str, Any] | None) -> str | None:
        if current is None:
            return None
        if _same_content(current, item.record):
            return "exists with the same content"
        modified = current.get("LastModified")
        if modified is not None and modified > event_datetime(item.record):
            return f"holds a newer object (modified {modified.isoformat()}); needs --overwrite"
        return "holds an older object; it will be replaced"

    def _head(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            response: dict[str, Any] = self.s3.head_object(Bucket=bucket, Key=key, **self._owner())
        except AWS_ERRORS as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise classify(exc, f"S3 HeadObject s3://{bucket}/{key}") from exc
        return response

    def _owner(self) -> dict[str, str]:
        return {"ExpectedBucketOwner": self.owner} if self.owner else {}


def _same_content(head: dict[str, Any], record: VersionRecord) -> bool:
    """Restored earlier (our metadata), or still the very upload that was backed up (eTag)."""
    metadata = head.get("Metadata") or {}
    if record.sha256 and metadata.get(SHA256_METADATA) == record.sha256:
        return True
    etag = str(head.get("ETag", "")).strip('"')
    return bool(record.etag) and etag == (record.etag or "").strip('"')


def upload_verified(
    s3: Any,
    volume: Volume,
    record: VersionRecord,
    bucket: str,
    key: str,
    *,
    on_bytes: Callable[[int], None] = lambda _n: None,
    extra: dict[str, Any] | None = None,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    part_size: int = PART_SIZE,
) -> None:
    """Put a stored version into S3; the object appears only if its SHA-256 checked out.

    Small objects are read whole and sent in one PutObject with their SHA-256 checksum;
    large ones stream as a multipart upload (one part in memory at a time) that is
    completed only after the last byte verified, and aborted otherwise.
    """
    arguments: dict[str, Any] = {
        "Bucket": bucket,
        "Key": key,
        "Metadata": {
            SHA256_METADATA: record.sha256 or "",
            VERSION_METADATA: record.version_id or record.version_token,
        },
        **(extra or {}),
    }
    chunks = verified_chunks(volume, record)
    what = f"S3 upload to s3://{bucket}/{key}"
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
        _multipart(s3, chunks, arguments, part_size, on_bytes, what)


def _multipart(
    s3: Any,
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
        parts = []
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


# -- executing -----------------------------------------------------------------------


@dataclass
class Summary:
    results: list[ItemResult]
    plan: Plan

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.plan.missing

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "ok": self.ok,
            "restored": self.count(Status.RESTORED),
            "unchanged": self.count(Status.UNCHANGED),
            "planned": self.count(Status.PLANNED),
            "failed": len(self.failed),
            "bytes": self.bytes,
            "renamed": len(self.plan.renamed),
            "skipped": [{"key": c.key, "reason": c.reason} for c in self.plan.skipped],
            "missing": [{"key": c.key, "reason": c.reason} for c in self.plan.missing],
        }


class Restorer:
    """Runs a plan against a target with a pool of threads; one item's failure is its own."""

    def __init__(
        self,
        target: Target,
        *,
        workers: int = 8,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.target = target
        self.workers = workers
        self.progress = progress or NoProgress()
        self.stop = stop or threading.Event()  # set: items not yet started are skipped

    def run(self, plan: Plan, *, dry_run: bool = False) -> Summary:
        self.progress.start(len(plan.items), plan.total_bytes)
        try:
            if dry_run:
                results = [self._dry(item) for item in plan.items]
            else:
                results = self._in_parallel(plan.items)
        finally:
            self.progress.close()
        return Summary(results, plan)

    def _in_parallel(self, items: list[Item]) -> list[ItemResult]:
        """Files in progress always finish or clean up; an exception cancels the rest."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="restore")
        try:
            futures = [pool.submit(self._one, item) for item in items]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _dry(self, item: Item) -> ItemResult:
        result = ItemResult(
            item, self.target.destination(item), Status.PLANNED, note=self.target.check(item)
        )
        self.progress.finished(result)
        return result

    def _one(self, item: Item) -> ItemResult:
        destination = self.target.destination(item)
        if self.stop.is_set():
            result = ItemResult(item, destination, Status.FAILED, error="interrupted: not started")
            self.progress.finished(result)
            return result
        written = 0

        def on_bytes(nbytes: int) -> None:
            nonlocal written
            written += nbytes
            self.progress.advance(nbytes)

        try:
            status = self.target.restore(item, on_bytes)
            result = ItemResult(item, destination, status, bytes=written)
        except (BackupAgentError, OSError) as exc:
            error = str(exc) if isinstance(exc, BackupAgentError) else f"{destination}: {exc}"
            result = ItemResult(item, destination, Status.FAILED, bytes=written, error=error)
            log.error(
                "restore.failed",
                bucket=item.record.bucket,
                key=item.key,
                version=item.record.version_id or item.record.version_token,
                error=error,
            )
        self.progress.finished(result)
        return result


# -- verify --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    record: VersionRecord
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "problem",
            "bucket": self.record.bucket,
            "key": self.record.key,
            "version_id": self.record.version_id,
            "version_token": self.record.version_token,
            "sha256": self.record.sha256,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    copies: int  # distinct stored copies on record
    checked: int
    versions: int  # stored versions those copies back
    problems: list[Problem]
    bytes: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "ok": self.ok,
            "copies": self.copies,
            "checked": self.checked,
            "versions": self.versions,
            "problems": len(self.problems),
            "bytes": self.bytes,
        }


def stored_versions(
    source: RestoreSource, buckets: Iterable[str], prefix: str = ""
) -> Iterator[VersionRecord]:
    """Every stored (non-tombstone) version under `prefix` in `buckets`."""
    for bucket in buckets:
        for latest in source.latest(bucket, prefix):
            for record in source.history(bucket, latest.key):
                if not record.deleted and record.sha256:
                    yield record


def verify(
    volume: Volume,
    records: Iterable[VersionRecord],
    *,
    sample: float = 1.0,
    rng: random.Random | None = None,
    workers: int = 4,
    progress: Progress | None = None,
) -> VerifyReport:
    """Decompress each distinct copy (or a random `sample` fraction) and check it."""
    by_copy: dict[str, list[VersionRecord]] = {}
    for record in records:
        by_copy.setdefault(record.sha256 or "", []).append(record)
    chosen = sorted(by_copy)
    if sample < 1.0:
        count = min(len(chosen), math.ceil(len(chosen) * sample))
        chosen = sorted((rng or random.Random()).sample(chosen, count))  # noqa: S311 - not crypto
    progress = progress or NoProgress()
    progress.start(len(chosen), sum(by_copy[sha][0].size or 0 for sha in chosen))
    lock = threading.Lock()
    problems: list[Problem] = []
    checked_bytes = 0

    def check(sha: str) -> None:
        nonlocal checked_bytes
        first = by_copy[sha][0]
        item = Item(first)
        try:
            for chunk in verified_chunks(volume, first):
                progress.advance(len(chunk))
            status, error = Status.UNCHANGED, None
            with lock:
                checked_bytes += first.size or 0
        except CorruptCopy as exc:
            status, error = Status.FAILED, exc.reason
            with lock:
                problems.extend(Problem(r, error) for r in by_copy[sha])
            for record in by_copy[sha]:
                log.error(
                    "verify.problem",
                    bucket=record.bucket,
                    key=record.key,
                    version=record.version_id or record.version_token,
                    error=error,
                )
        progress.finished(ItemResult(item, sha, status, error=error))

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
            list(pool.map(check, chosen))
    finally:
        progress.close()
    problems.sort(key=lambda p: (p.record.bucket, p.record.key, p.record.order_key))
    return VerifyReport(
        copies=len(by_copy),
        checked=len(chosen),
        versions=sum(len(v) for v in by_copy.values()),
        problems=problems,
        bytes=checked_bytes,
    )


def _same_file(path: Path, record: VersionRecord) -> bool:
    """A regular file (not a symlink) already holding exactly the recorded bytes."""
    if path.is_symlink() or not path.is_file():
        return False
    return _file_sha256(path) == record.sha256


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
