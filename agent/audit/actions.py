"""Each audited action's record, made from what the action reports.

The audit sits above the capabilities (pyproject's layers contract), so it reads their
reports — a restore `Summary`, a `Shared` URL, a `RetentionReport` — and the capabilities
know nothing of it. The callers (agent/cli, agent/runtime) record at the end of an action.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from agent.audit.inventory import InventoryReport
from agent.audit.records import MAX_KEYS, Actor, AuditRecord
from agent.config import Config
from agent.lifecycle.gc import GcReport
from agent.lifecycle.pressure import PressureReport
from agent.lifecycle.reindex import ReindexReport
from agent.lifecycle.retention import RetentionReport
from agent.lifecycle.scrub import ScrubReport
from agent.records import VersionRecord
from agent.restore.restorer import Summary
from agent.restore.share import Shared
from agent.restore.targets import Status
from agent.restore.verify import VerifyReport
from agent.snapshots.records import SnapshotRun


def _named(records: Iterable[VersionRecord]) -> dict[str, Any]:
    keys: list[str] = []
    versions: list[str] = []
    seen: set[str] = set()
    total = 0
    for record in records:
        if record.key not in seen:
            seen.add(record.key)
            total += 1
            if len(keys) < MAX_KEYS:
                keys.append(f"s3://{record.bucket}/{record.key}")
        if len(versions) < MAX_KEYS:
            versions.append(record.version_id or record.version_token)
    return {"keys": tuple(keys), "keys_total": total, "versions": tuple(versions)}


def restore(
    summary: Summary,
    who: Actor,
    at: datetime,
    *,
    to_s3: bool,
    target: str,
    prefix: str | None,
) -> AuditRecord:
    restored = [r for r in summary.results if r.status is Status.RESTORED]
    failed = len(summary.failed) + len(summary.plan.missing)
    outcome = "ok" if summary.ok else ("partial" if restored else "failed")
    return AuditRecord(
        at=at,
        who=who,
        action="restore-s3" if to_s3 else "restore",
        outcome=outcome,
        target=target,
        prefix=prefix,
        files=len(restored),
        bytes=summary.bytes,
        details={
            "unchanged": summary.count(Status.UNCHANGED),
            "failed": failed,
            "skipped": len(summary.plan.skipped),
        },
        **_named(r.item.record for r in restored),
    )


def share(shared: Shared, who: Actor, at: datetime) -> AuditRecord:
    """The staged copy and when the URL stops working; never the URL (its signature)."""
    return AuditRecord(
        at=at,
        who=who,
        action="share",
        outcome="ok",
        target=f"s3://{shared.bucket}/{shared.key}",
        files=1,
        bytes=shared.record.size or 0,
        details={
            "expires_at": shared.expires_at.isoformat(),
            "asked_seconds": shared.asked_seconds,
            "cut_short": shared.cut_short,
            "sha256": shared.record.sha256,
        },
        **_named([shared.record]),
    )


def verify(report: VerifyReport, who: Actor, at: datetime, *, prefix: str) -> AuditRecord:
    return AuditRecord(
        at=at,
        who=who,
        action="verify",
        outcome="ok" if report.ok else "failed",
        prefix=prefix,
        files=report.checked,
        bytes=report.bytes,
        details={
            "copies": report.copies,
            "versions": report.versions,
            "problems": len(report.problems),
        },
        **_named(p.record for p in report.problems),
    )


def retention(report: RetentionReport, who: Actor, at: datetime) -> AuditRecord:
    return AuditRecord(
        at=at,
        who=who,
        action="retention",
        outcome="ok",
        files=report.expired,
        bytes=report.expired_stored_bytes,
        details={"keys": report.keys, "keys_expired": report.keys_expired},
        **_named(report.expired_records),
    )


def when_full(report: PressureReport, who: Actor, at: datetime) -> AuditRecord:
    """Retention under pressure: a retention record naming every version it expired, failed
    (with its error) when a later step raised; its collection is a gc record of its own."""
    keys = list(dict.fromkeys(f"s3://{r.bucket}/{r.key}" for r in report.removed))
    details: dict[str, Any] = {
        "when_full": True,
        "needed_bytes": report.needed_bytes,
        "by_stage": {
            stage: sum(1 for r in report.removed if r.stage == stage)
            for stage in ("rules", "when_full")
        },
        "bytes_freed": report.bytes_freed,
    }
    if report.failed is not None:
        details.update(error=report.error, error_class=type(report.failed).__name__)
    return AuditRecord(
        at=at,
        who=who,
        action="retention",
        outcome="failed" if report.failed is not None else "ok",
        files=len(report.removed),
        bytes=report.expired_stored_bytes,
        keys=tuple(keys[:MAX_KEYS]),
        keys_total=len(keys),
        versions=tuple(r.version_id or r.version_token for r in report.removed[:MAX_KEYS]),
        details=details,
    )


def when_full_gc(report: GcReport, who: Actor, at: datetime) -> AuditRecord:
    """The collection retention under pressure ran (`when_full.gc_grace_period`)."""
    record = gc(report, who, at)
    return replace(record, details={**record.details, "when_full": True})


def gc(report: GcReport, who: Actor, at: datetime) -> AuditRecord:
    return AuditRecord(
        at=at,
        who=who,
        action="gc",
        outcome="ok",
        files=report.removed,
        bytes=report.bytes_freed,
        details={
            "copies": report.copies,
            "kept_in_use": report.kept_in_use,
            "fleet_duplicates": report.duplicates,  # records of copies another volume holds
            "removed_sha256": [sha for sha, _ in report.removed_copies[:MAX_KEYS]],
        },
    )


def scrub(report: ScrubReport, who: Actor, at: datetime) -> AuditRecord:
    return AuditRecord(
        at=at,
        who=who,
        action="scrub",
        outcome="failed" if report.unrecoverable else "ok",
        files=report.checked,
        bytes=report.bytes_read,
        details={
            "corrupt": report.corrupt,
            "healed": report.healed,
            "unrecoverable": report.unrecoverable,
            "corrupt_sha256": report.bad[:MAX_KEYS],
        },
        **_named(report.healed_records),
    )


def reindex(report: ReindexReport, who: Actor, at: datetime, *, table: str) -> AuditRecord:
    return AuditRecord(
        at=at,
        who=who,
        action="reindex",
        outcome="ok",
        target=f"dynamodb:{table}",
        files=report.added,
        details={"records": report.records, "table_created": report.table_created},
    )


def snapshot(run: SnapshotRun, who: Actor, at: datetime) -> AuditRecord:
    return AuditRecord(
        at=at,
        who=who,
        action="snapshot",
        outcome="ok" if run.ok else "failed",
        target=run.snapshot_id,
        details={
            "volume_id": run.volume_id,
            "state": run.state,
            "copy_snapshot_id": run.copy_snapshot_id,
            "deleted": list(run.deleted),
            "message": run.message,
        },
    )


def scheduled_snapshot(run: SnapshotRun | None, who: Actor, at: datetime) -> AuditRecord:
    """The scheduled job reports None when it failed (and alerted) or is turned off."""
    if run is None:
        return AuditRecord(at=at, who=who, action="snapshot", outcome="failed")
    return snapshot(run, who, at)


def config_reload(old: Config, new: Config, who: Actor, at: datetime) -> AuditRecord:
    """Which sections changed (their names, not their values: a value may be a secret)."""
    changed = sorted(
        name for name in type(new).model_fields if getattr(old, name) != getattr(new, name)
    )
    return AuditRecord(
        at=at,
        who=who,
        action="config-reload",
        outcome="ok",
        details={"changed_sections": changed},
    )


def inventory(report: InventoryReport, who: Actor, at: datetime) -> AuditRecord:
    return AuditRecord(
        at=at,
        who=who,
        action="inventory",
        outcome="ok",
        target=report.parts[0].rsplit("/", 1)[0] + "/" if report.parts else None,
        files=len(report.parts),
        details={"keys": report.keys, "rows": report.rows},
    )


def failed(
    action: str,
    who: Actor,
    at: datetime,
    error: BaseException | str,
    *,
    target: str | None = None,
    prefix: str | None = None,
    keys: Sequence[str] = (),
    versions: Sequence[str] = (),
) -> AuditRecord:
    """An attempt that raised (`error`, the exception) or was refused (`error`, why): still
    recorded, with what it was asked to touch and the error's class and message."""
    kind = type(error).__name__ if isinstance(error, BaseException) else "Refused"
    return AuditRecord(
        at=at,
        who=who,
        action=action,
        outcome="failed",
        target=target,
        prefix=prefix,
        keys=tuple(keys[:MAX_KEYS]),
        keys_total=len(keys),
        versions=tuple(versions[:MAX_KEYS]),
        details={"error": f"{kind}: {error}", "error_class": kind},
    )
