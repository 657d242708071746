"""`backup-restore verify`: decompress stored copies and check them against their records.

Nothing is written. Each distinct copy (or a random sample of them) is read once through
`verified_chunks`; a bad copy is reported once for every stored version it backs.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from agent.history import is_removal
from agent.holders import held_by
from agent.records import VersionRecord
from agent.restore.copies import CorruptCopy, verified_chunks
from agent.restore.plan import Item
from agent.restore.restorer import ItemResult, NoProgress, Progress
from agent.restore.source import RestoreSource
from agent.restore.targets import Status
from agent.storage.volume import Volume

log = structlog.get_logger("agent.restore")


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


# Stored versions of one key kept between the two passes of `stored_versions`; a key with
# more is read a second time instead.
KEPT_VERSIONS = 1000


def stored_versions(
    source: RestoreSource,
    buckets: Iterable[str],
    prefix: str = "",
    *,
    removed: set[str] | None = None,
) -> Iterator[VersionRecord]:
    """Every stored (non-tombstone) version under `prefix` in `buckets`, each key's in no
    promised order. With `removed`, the version token of each one whose removal from S3 is
    recorded (a version deleted for good: its copy is still a point in time to verify and
    restore, but no replica group can copy it any more) is added to it before the version
    is yielded.

    A removal may come after the version it removes, so a key's records are read twice:
    once for the removals, then for the versions. The first pass keeps up to `KEPT_VERSIONS`
    stored versions, so a key with fewer is read once; a longer history is streamed again
    (online: a second Query). Memory per key: the removed version ids and at most
    `KEPT_VERSIONS` records, however many versions the key has."""
    for bucket in buckets:
        for latest in source.latest(bucket, prefix):
            gone: set[str] = set()
            kept: list[VersionRecord] | None = []
            for record in source.records(bucket, latest.key):
                if is_removal(record) and record.version_id not in (None, "null"):
                    gone.add(record.version_id)
                if kept is not None and _stored(record):
                    kept.append(record)
                    if len(kept) > KEPT_VERSIONS:
                        kept = None  # too many to keep: the second pass reads them again
            if kept is None:
                kept_or_again: Iterable[VersionRecord] = _stored_of(source, bucket, latest.key)
            else:
                kept_or_again = kept
            for record in kept_or_again:
                if removed is not None and record.version_id in gone:
                    removed.add(record.version_token)
                yield record


def _stored(record: VersionRecord) -> bool:
    return not record.deleted and bool(record.sha256)


def _stored_of(source: RestoreSource, bucket: str, key: str) -> Iterator[VersionRecord]:
    return (record for record in source.records(bucket, key) if _stored(record))


@dataclass
class Held:
    """Splits records into this volume's (passed on) and other volumes' (counted): in a
    fleet a member verifies the copies its own volume holds; the others are verified
    where they are. Records that name no volume (older releases) are this volume's."""

    volume_id: str
    elsewhere: int = 0

    def only(self, records: Iterable[VersionRecord]) -> Iterator[VersionRecord]:
        for record in records:
            if not record.volume_id or held_by(record, self.volume_id):
                yield record
            else:
                self.elsewhere += 1


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
            held = 0
            for chunk in verified_chunks(volume, first):
                held += len(chunk)
                progress.advance(len(chunk))
            status, error = Status.UNCHANGED, None
            # the copy is checked against the first record's size; another version of the
            # same bytes whose record says another size would fail its restore, so it is a
            # problem here too (only the first one's was compared before, 2026-12-02)
            wrong = [r for r in by_copy[sha][1:] if r.size is not None and r.size != held]
            with lock:
                checked_bytes += held
                problems.extend(
                    Problem(r, f"recorded size {r.size}, but the copy holds {held} bytes")
                    for r in wrong
                )
            if wrong:
                status, error = Status.FAILED, f"{len(wrong)} record(s) give another size"
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
