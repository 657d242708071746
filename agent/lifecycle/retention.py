"""Retention: which recorded versions to keep, and forgetting the others.

The policy (config ``retention:``) keeps a version when ANY rule keeps it; with no
rule set everything is kept:

* ``keep_last_versions: N`` — the newest N versions of a key (the current one counts);
* ``keep_younger_than: 30d`` — a version replaced less than this long ago (its age
  counts from when a newer version or a delete superseded it, like S3's NoncurrentDays);
* ``keep_deleted_days: D`` — a deleted key (LATEST is a tombstone) keeps its versions,
  its last version always, for D days after the delete; then the whole key expires.
  Unset: deleted keys follow the two rules above and their last version is kept forever.

The current version of a live key is never expired — the version S3 serves, so after
its newer version was deleted for good, the one S3 serves again (agent/history.py). An
older tombstone (delete, then re-created) is kept while any version before it is kept.
A removal record (a version deleted for good in S3) is kept exactly as long as the
version it removes; that version counts as replaced from its removal on.

In a fleet (several volumes on one table) each member acts on its own volume's records only
(`acts_on`: `holders.held_by`, and records of older releases that name no volume): the
policy still reads the key's whole history, so "the newest N" means fleet-wide, but the
expiry note goes to the journal of the volume that holds the copy, whose gc frees it. With
replicas a version has a holder per replica group, and each expires it on its own: it
journals the expiry and releases its hold (`Ledger.release`); the item goes with the last
holder, so every holder's retention still sees it. A key's LATEST goes with its last
record, by whichever member deletes that one.

Expiring a version: a journal note ``{"kind": "expired", ...record}`` is appended and
fsynced first (so a journal replay forgets the version too), then the DynamoDB version
item is deleted; a fully expired key also loses its LATEST item (conditionally, so a
version recorded meanwhile survives). Copies are not touched: garbage collection
(agent/lifecycle/gc.py) removes copies that no record references any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from agent import history
from agent.config import RetentionConfig
from agent.holders import held_by
from agent.lifecycle.context import Clock, LifecycleContext, utc_now
from agent.records import Rejection, VersionRecord, parse_time
from agent.stats import Stats
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger

log = structlog.get_logger("agent.retention")


@dataclass(frozen=True, slots=True)
class Entry:
    """One version (or tombstone) of a key, as the policy sees it."""

    token: str
    created: datetime
    deleted: bool
    tiebreak: str = ""  # orders versions created in the same instant (listing order)
    order: str = ""  # the version order (agent/order.py) when known: it comes first
    removed_at: datetime | None = None  # deleted for good in S3 (a removal record)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last_versions: int | None = None
    keep_younger_than: timedelta | None = None
    keep_deleted: timedelta | None = None

    @classmethod
    def from_config(cls, config: RetentionConfig) -> RetentionPolicy:
        days = config.keep_deleted_days
        return cls(
            keep_last_versions=config.keep_last_versions,
            keep_younger_than=config.keep_younger_than,
            keep_deleted=timedelta(days=days) if days is not None else None,
        )

    @property
    def keeps_everything(self) -> bool:
        return (
            self.keep_last_versions is None
            and self.keep_younger_than is None
            and self.keep_deleted is None
        )

    def kept(
        self,
        entries: Sequence[Entry],
        current: str | None,
        now: datetime,
        held: str | None = None,
    ) -> set[str]:
        """Tokens to keep among `entries`; `current` is the key's LATEST (default: newest);
        `held`, for a deleted key, the version S3 served last (default: the newest one
        created before the delete)."""
        ordered = sorted(entries, key=lambda e: (e.order, e.created, e.tiebreak))
        if not ordered:
            return set()
        if self.keeps_everything:
            return {e.token for e in ordered}
        head = next((e for e in ordered if e.token == current), ordered[-1])
        kept: set[str] = set()
        if head.deleted:
            if self.keep_deleted is not None and now - head.created >= self.keep_deleted:
                return set()  # deleted longer than keep_deleted_days ago: the key expires
            kept.add(head.token)
            before = [e for e in ordered if not e.deleted and e.created <= head.created]
            protected = next((e for e in ordered if e.token == held), None)
            protected = protected or (before[-1] if before else None)
        else:
            protected = head
        if protected is not None:
            kept.add(protected.token)
        for index, entry in enumerate(ordered):
            if entry.deleted or entry.token in kept:
                continue
            if self._keeps_version(ordered, index, now):
                kept.add(entry.token)
        for index, entry in enumerate(ordered):
            if entry.deleted and any(e.token in kept for e in ordered[:index] if not e.deleted):
                kept.add(entry.token)
        return kept

    def _keeps_version(self, ordered: Sequence[Entry], index: int, now: datetime) -> bool:
        newer = ordered[index + 1 :]
        if self.keep_last_versions is not None:
            rank = 1 + sum(1 for e in newer if not e.deleted)
            if rank <= self.keep_last_versions:
                return True
        if self.keep_younger_than is not None:
            superseded_at = newer[0].created if newer else now
            removed_at = ordered[index].removed_at
            if removed_at is not None:
                superseded_at = min(superseded_at, removed_at)
            if now - superseded_at < self.keep_younger_than:
                return True
        return False


def entry_of(record: VersionRecord, removed_at: datetime | None = None) -> Entry:
    return Entry(
        record.version_token,
        parse_time(record.event_time),
        record.deleted,
        tiebreak=parse_time(record.backup_time).isoformat(),
        order=record.order_key,
        removed_at=removed_at,
    )


def policy_view(
    policy: RetentionPolicy, records: Sequence[VersionRecord], latest: VersionRecord, now: datetime
) -> set[str]:
    """Tokens to keep of one key's records. Removals (a version deleted for good in S3) are
    not versions: they date their version's end, and stay exactly as long as it does."""
    removals = [r for r in records if history.is_removal(r)]
    removed_at = {r.version_id: parse_time(r.event_time) for r in removals}
    entries = [
        entry_of(r, removed_at.get(r.version_id) if r.version_id not in (None, "null") else None)
        for r in records
        if not history.is_removal(r)
    ]
    if history.is_removal(latest):  # no version left in S3: deleted since this removal
        entries.append(entry_of(latest))
    held = history.last_held(records) if latest.deleted else None
    kept = policy.kept(entries, latest.version_token, now, held.version_token if held else None)
    kept_ids = {r.version_id for r in records if r.version_token in kept and not r.deleted}
    kept_ids |= {r.version_id for r in records if r.version_token in kept and r.delete_marker}
    for removal in removals:
        if removal.version_id in kept_ids:
            kept.add(removal.version_token)
    return kept


@dataclass
class RetentionReport:
    keys: int = 0
    versions: int = 0
    expired: int = 0
    keys_expired: int = 0
    expired_stored_bytes: int = 0
    dry_run: bool = False
    would_expire: list[VersionRecord] = field(default_factory=list)
    expired_records: list[VersionRecord] = field(default_factory=list)  # done (not dry_run)
    rejected: list[Rejection] = field(default_factory=list)  # ledger items skipped


class Retention:
    """Applies a `RetentionPolicy` to every key of the configured buckets."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        journal: Journal,
        policy: RetentionPolicy,
        buckets: Sequence[str],
        stats: Stats | None = None,
        clock: Clock = utc_now,
        volume_id: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.journal = journal
        self.policy = policy
        self.buckets = list(buckets)
        self.stats = stats or Stats()
        self.clock = clock
        self.volume_id = volume_id  # None: every record (the journal's volume holds all)

    @classmethod
    def from_context(cls, ctx: LifecycleContext) -> Retention:
        return cls(
            ledger=ctx.ledger,
            journal=ctx.journal,
            policy=RetentionPolicy.from_config(ctx.config.retention),
            buckets=ctx.config.buckets,
            stats=ctx.stats,
            volume_id=ctx.volume_id,
        )

    def acts_on(self, record: VersionRecord) -> bool:
        """Is `record` this member's to expire? Its volume's, or one of an older release
        that names no volume (written when one agent held everything)."""
        if self.volume_id is None or not record.volume_id:
            return True
        return held_by(record, self.volume_id)

    def run_once(
        self, *, dry_run: bool = False, report: RetentionReport | None = None
    ) -> RetentionReport:
        """`report`, when given, is filled as the run goes: a caller still has what was
        expired when the run raises part-way (retention under pressure names it)."""
        if report is None:
            report = RetentionReport()
        report.dry_run = dry_run
        if self.policy.keeps_everything:
            log.info("retention.nothing_to_do", reason="no retention rule configured")
            return report
        now = self.clock()
        for bucket in self.buckets:
            for latest in self.ledger.keys(bucket):
                self.apply_key(latest, now, report)
        report.rejected = self.ledger.rejections.all()
        log.info(
            "retention.finished",
            keys=report.keys,
            versions=report.versions,
            expired=report.expired,
            keys_expired=report.keys_expired,
            expired_stored_bytes=report.expired_stored_bytes,
            dry_run=dry_run,
        )
        return report

    def apply_key(self, latest: VersionRecord, now: datetime, report: RetentionReport) -> None:
        versions = self.ledger.versions(latest.bucket, latest.key)
        report.keys += 1
        report.versions += len(versions)
        if not versions:
            # a LATEST with no version left (the last hold's delete answered late, or an
            # older release): nothing would ever remove it, and the key stayed listed
            log.warning("retention.orphan_latest", bucket=latest.bucket, key=latest.key)
            if not report.dry_run:
                self.ledger.settle(latest.bucket, latest.key)
            return
        kept = policy_view(self.policy, versions, latest, now)
        if not latest.deleted and latest.version_token not in kept:
            log.error("retention.refused", bucket=latest.bucket, key=latest.key)
            return  # never expire the current version of a live key
        expired = [r for r in versions if r.version_token not in kept and self.acts_on(r)]
        others = [r for r in versions if r.version_token not in kept and not self.acts_on(r)]
        forgotten = True  # every expired item deleted: no other volume holds one of them
        for record in expired:
            report.expired += 1
            report.expired_stored_bytes += record.stored_size or 0
            if report.dry_run:
                report.would_expire.append(record)
                forgotten = forgotten and not self._shared(record)
            else:
                forgotten = self.expire(record, now) and forgotten
                report.expired_records.append(record)
        # the key's last records: LATEST goes too (a replica still held keeps it listed)
        whole_key = not kept and bool(versions) and not others and forgotten
        if whole_key:
            report.keys_expired += 1
            if not report.dry_run:
                self.ledger.delete_latest(latest.bucket, latest.key, latest.version_token)
        if expired:
            log.info(
                "retention.expired" if not report.dry_run else "retention.would_expire",
                bucket=latest.bucket,
                key=latest.key,
                versions=[r.version_token for r in expired],
                whole_key=whole_key,
            )
        if others:
            log.debug("retention.left_to_holders", key=latest.key, versions=len(others))

    def expire(self, record: VersionRecord, now: datetime) -> bool:
        """Journal first (a replay forgets it too), then the ledger: in a fleet this
        volume releases its hold (`Ledger.release`), and the item goes with the last
        holder. True when the item is gone."""
        self.journal.append_note("expired", {**record.to_dict(), "expired_at": now.isoformat()})
        self.stats.count("retention.expired")
        if self.volume_id is None or not record.volume_id:
            self.ledger.delete_version(record)  # one holder of everything: this volume
            return True
        return self.ledger.release(record, self.volume_id)

    def _shared(self, record: VersionRecord) -> bool:
        """Does another volume hold `record` too (a replica)?"""
        if self.volume_id is None or not record.volume_id:
            return False
        return any(v != self.volume_id for v in record.holder_volumes())
