"""EBS snapshots of the backup volume: consistent, scheduled, recorded, pruned.

Kept whole: one class, a run's steps in order.

One run (`SnapshotManager.take`):

1. close the write barrier (copies in their rename → journal → ledger step finish,
   new ones wait), read the journal position, flush the filesystem (fsfreeze or
   sync), start CreateSnapshot with the agent's tags, open the barrier again — writes
   pause for about a second, never for the snapshot's whole copy;
2. record the snapshot (the volume's `snapshots/snapshots.jsonl` and a DynamoDB item
   `pk = "snapshot#<volume id>"`, outside the object key space: bucket names hold no `#`);
3. poll until it completes; a failed or stuck snapshot is alerted (`on_alert`);
4. copy it to `copy_to_region` when configured, then apply retention in each region.

Retention itself is policy.py; the records and tags are records.py. Retention only ever
deletes snapshots tagged `backup-agent:managed=true` *and* carrying this volume's id.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from agent.aws import classify, error_code
from agent.config import SnapshotsConfig
from agent.errors import BackupAgentError
from agent.snapshots.flush import Flusher
from agent.snapshots.listing import list_snapshots
from agent.snapshots.metrics import snapshot_metrics
from agent.snapshots.policy import retention_plan
from agent.snapshots.records import (
    JOURNAL_TAG,
    MANAGED_TAG,
    RECORD_PK_PREFIX,
    SOURCE_TAG,
    TAKEN_AT_TAG,
    VOLUME_TAG,
    Snapshot,
    SnapshotRun,
    append_record,
    position_text,
    read_records,
    run_entry,
)
from agent.storage.barrier import DEFAULT_EXCLUSIVE_TIMEOUT, Barrier, NoBarrier
from agent.storage.encryption import AlertHook
from agent.storage.journal import Journal

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import TagSpecificationTypeDef

log = structlog.get_logger("agent.snapshots")


class SnapshotManager:
    """Takes, records and prunes snapshots of one EBS volume. Everything is passed in."""

    def __init__(
        self,
        ec2: EC2Client,
        clock: Callable[[], datetime],
        *,
        settings: SnapshotsConfig,
        volume_id: str | Callable[[], str],
        region: str,
        root: Path,
        journal: Journal,
        barrier: Barrier | None = None,
        flusher: Flusher | None = None,
        dynamodb: DynamoDBClient | None = None,
        table: str | None = None,
        copy_ec2: EC2Client | None = None,
        on_alert: AlertHook | None = None,
        poll_seconds: float = 15.0,
        completion_timeout: timedelta = timedelta(hours=6),
        barrier_timeout: float = DEFAULT_EXCLUSIVE_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ec2 = ec2
        self.clock = clock
        self.settings = settings
        self._volume_id = volume_id
        self.region = region
        self.root = Path(root)
        self.journal = journal
        self.barrier = barrier or NoBarrier()
        self.flusher = flusher or Flusher()
        self.dynamodb = dynamodb
        self.table = table
        self.copy_ec2 = copy_ec2
        self.on_alert = on_alert or (lambda kind, message: None)
        self.poll_seconds = poll_seconds
        self.completion_timeout = completion_timeout
        self.barrier_timeout = barrier_timeout
        self.sleep = sleep
        self.last_run: SnapshotRun | None = None

    @property
    def volume_id(self) -> str:
        if callable(self._volume_id):
            self._volume_id = self._volume_id()  # discovered once, on first use
        return self._volume_id

    # -- entry points ------------------------------------------------------------------

    def run_scheduled(self) -> SnapshotRun | None:
        """The scheduler's job: take a snapshot; never raises (failures are alerted)."""
        if not self.settings.enabled:
            log.info("snapshot.disabled")
            return None
        try:
            return self.take()
        except (
            BackupAgentError,
            botocore.exceptions.ClientError,
            botocore.exceptions.BotoCoreError,
            OSError,
        ) as exc:
            self._alert("snapshot.failed", f"snapshot of the backup volume failed: {exc}")
            return None

    def take(self, dry_run: bool = False) -> SnapshotRun:
        """Barrier → flush → CreateSnapshot → release → record → wait → copy → retention."""
        volume_id = self.volume_id
        if dry_run:
            return self._dry_run(volume_id)
        started = self.clock()
        with self.barrier.exclusive(self.barrier_timeout):
            position = position_text(self.journal)
            tags = self.tags(volume_id, started, position)
            with self.flusher.flushed(self.root) as method:
                snapshot_id = self._create(volume_id, tags)
        log.info(
            "snapshot.started",
            snapshot_id=snapshot_id,
            volume_id=volume_id,
            journal_position=position,
            flush=method,
        )
        run = SnapshotRun(
            volume_id=volume_id,
            state="pending",
            snapshot_id=snapshot_id,
            started_at=started,
            journal_position=position,
            flush=method,
            tags=tags,
        )
        self._record(run)
        run = self._finish(run, started)
        self._record(run)
        self.last_run = run
        return run

    def _finish(self, run: SnapshotRun, started: datetime) -> SnapshotRun:
        assert run.snapshot_id is not None
        state, message = self.wait(run.snapshot_id, started)
        duration = (self.clock() - started).total_seconds()
        run = _replace(run, state=state, duration_seconds=duration, message=message)
        if state == "error":
            self._alert("snapshot.failed", f"snapshot {run.snapshot_id} failed: {message}")
            return run
        if state == "stuck":
            self._alert("snapshot.stuck", f"snapshot {run.snapshot_id} not complete: {message}")
            return run
        log.info("snapshot.completed", snapshot_id=run.snapshot_id, duration_seconds=duration)
        copy_id = self._copy(run)
        try:
            deleted = self.apply_retention()
        except BackupAgentError as exc:  # the snapshot is good; pruning waits for the next run
            self._alert("snapshot.retention_failed", f"retention after {run.snapshot_id}: {exc}")
            deleted = []
        return _replace(run, copy_snapshot_id=copy_id, deleted=tuple(deleted))

    def _dry_run(self, volume_id: str) -> SnapshotRun:
        now = self.clock()
        position = position_text(self.journal)
        tags = self.tags(volume_id, now, position)
        would_delete = self.apply_retention(dry_run=True)
        method = "fsfreeze" if self.flusher.freezable_mount(self.root) else "sync"
        log.info(
            "snapshot.dry_run",
            volume_id=volume_id,
            tags=tags,
            flush=method,
            would_delete=would_delete,
        )
        run = SnapshotRun(
            volume_id=volume_id,
            state="dry-run",
            started_at=now,
            journal_position=position,
            flush=method,
            tags=tags,
            deleted=tuple(would_delete),
        )
        self.last_run = run
        return run

    # -- AWS steps --------------------------------------------------------------------

    def tags(self, volume_id: str, taken_at: datetime, position: str | None) -> dict[str, str]:
        tags = dict(self.settings.tags)
        tags.setdefault("Name", f"backup-agent {volume_id}")
        tags.update(
            {
                MANAGED_TAG: "true",
                VOLUME_TAG: volume_id,
                TAKEN_AT_TAG: taken_at.astimezone(UTC).isoformat(),
            }
        )
        if position:
            tags[JOURNAL_TAG] = position
        return tags

    def _create(self, volume_id: str, tags: dict[str, str]) -> str:
        try:
            response = self.ec2.create_snapshot(
                VolumeId=volume_id,
                Description=f"backup-agent snapshot of {volume_id}",
                TagSpecifications=[_snapshot_tags(tags)],
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, f"EC2 CreateSnapshot of {volume_id}") from exc
        return str(response["SnapshotId"])

    def wait(self, snapshot_id: str, started: datetime) -> tuple[str, str]:
        """Poll until completed or error; "stuck" once `completion_timeout` has passed."""
        while True:
            state, message = self._state(snapshot_id)
            if state in ("completed", "error"):
                return state, message
            elapsed = self.clock() - started
            if elapsed >= self.completion_timeout:
                return "stuck", f"{state} {message} after {elapsed}".strip()
            self.sleep(self.poll_seconds)

    def _state(self, snapshot_id: str) -> tuple[str, str]:
        try:
            items = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "InvalidSnapshot.NotFound":
                return "error", "the snapshot disappeared"
            log.warning("snapshot.poll_failed", snapshot_id=snapshot_id, error=str(exc))
            return "pending", ""
        except botocore.exceptions.BotoCoreError as exc:
            log.warning("snapshot.poll_failed", snapshot_id=snapshot_id, error=str(exc))
            return "pending", ""
        if not items:
            return "error", "the snapshot disappeared"
        item = items[0]
        return str(item.get("State", "pending")), str(
            item.get("StateMessage") or item.get("Progress") or ""
        )

    def _copy(self, run: SnapshotRun) -> str | None:
        target = self.settings.copy_to_region
        if not target or self.copy_ec2 is None or run.snapshot_id is None:
            return None
        tags = dict(run.tags)
        tags[SOURCE_TAG] = run.snapshot_id
        try:
            response = self.copy_ec2.copy_snapshot(
                SourceRegion=self.region,
                SourceSnapshotId=run.snapshot_id,
                Description=f"backup-agent copy of {run.snapshot_id} ({self.region})",
                TagSpecifications=[_snapshot_tags(tags)],
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self._alert("snapshot.copy_failed", f"copy of {run.snapshot_id} to {target}: {exc}")
            return None
        copy_id = str(response["SnapshotId"])
        log.info("snapshot.copied", snapshot_id=run.snapshot_id, region=target, copy_id=copy_id)
        return copy_id

    # -- retention --------------------------------------------------------------------

    def apply_retention(self, dry_run: bool = False) -> list[str]:
        """Delete what the policy no longer keeps, in each region; the ids (to be) deleted."""
        deleted: list[str] = []
        for client, region in self._regions():
            snapshots = list_snapshots(client, region, self.volume_id)
            plan = retention_plan(snapshots, self.settings.retain, self.clock())
            for snapshot in plan.delete:
                if dry_run:
                    log.info("snapshot.would_delete", snapshot_id=snapshot.snapshot_id)
                    deleted.append(snapshot.snapshot_id)
                elif self._delete(client, snapshot):
                    deleted.append(snapshot.snapshot_id)
        return deleted

    def _delete(self, client: EC2Client, snapshot: Snapshot) -> bool:
        try:
            client.delete_snapshot(SnapshotId=snapshot.snapshot_id)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            log.warning(
                "snapshot.delete_failed", snapshot_id=snapshot.snapshot_id, error=str(exc)
            )  # InvalidSnapshot.InUse (an AMI uses it) and friends: try again next run
            return False
        log.info(
            "snapshot.deleted",
            snapshot_id=snapshot.snapshot_id,
            region=snapshot.region,
            taken_at=snapshot.taken_at.isoformat(),
        )
        self._record_deleted(snapshot)
        return True

    def _regions(self) -> list[tuple[Any, str]]:
        regions = [(self.ec2, self.region)]
        if self.settings.copy_to_region and self.copy_ec2 is not None:
            regions.append((self.copy_ec2, self.settings.copy_to_region))
        return regions

    # -- records ----------------------------------------------------------------------

    def _record(self, run: SnapshotRun) -> None:
        entry = run_entry(run, self.region, self.settings.copy_to_region)
        try:
            append_record(self.root, entry)
        except OSError as exc:
            log.warning("snapshot.record_failed", where="volume", error=str(exc))
        self._put_item(entry)

    def _record_deleted(self, snapshot: Snapshot) -> None:
        entry = {
            "snapshot_id": snapshot.snapshot_id,
            "volume_id": snapshot.volume_id,
            "region": snapshot.region,
            "taken_at": snapshot.taken_at.isoformat(),
            "state": "deleted",
            "deleted_at": self.clock().astimezone(UTC).isoformat(),
        }
        try:
            append_record(self.root, entry)
        except OSError as exc:
            log.warning("snapshot.record_failed", where="volume", error=str(exc))
        if snapshot.region == self.region:
            self._put_item(entry)

    def _put_item(self, entry: dict[str, Any]) -> None:
        if self.dynamodb is None or not self.table:
            return
        item = {k: {"S": str(v)} for k, v in entry.items() if v is not None}
        item["pk"] = {"S": RECORD_PK_PREFIX + str(entry["volume_id"])}
        item["sk"] = {"S": f"S#{entry['taken_at']}#{entry['snapshot_id']}"}
        try:
            if entry["state"] == "deleted":
                self.dynamodb.update_item(
                    TableName=self.table,
                    Key={"pk": item["pk"], "sk": item["sk"]},
                    UpdateExpression="SET #s = :s, deleted_at = :d",
                    ConditionExpression="attribute_exists(pk)",  # only snapshots we recorded
                    ExpressionAttributeNames={"#s": "state"},
                    ExpressionAttributeValues={":s": item["state"], ":d": item["deleted_at"]},
                )
            else:
                self.dynamodb.put_item(TableName=self.table, Item=item)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                log.warning("snapshot.record_failed", where="dynamodb", error=str(exc))
        except botocore.exceptions.BotoCoreError as exc:
            log.warning("snapshot.record_failed", where="dynamodb", error=str(exc))

    def _alert(self, kind: str, message: str) -> None:
        log.error(kind, message=message, volume_id=self._volume_id_or_none())
        try:
            self.on_alert(kind, message)
        except Exception as exc:  # noqa: BLE001 - a broken alert hook must not hide the failure
            log.error("snapshot.alert_failed", kind=kind, error=str(exc))

    def _volume_id_or_none(self) -> str | None:
        return self._volume_id if isinstance(self._volume_id, str) else None

    # -- metrics and alarm ------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Plain values for the metrics publisher (see `snapshot_metrics`)."""
        snapshots = list_snapshots(self.ec2, self.region, self.volume_id)
        values = snapshot_metrics(snapshots, self.clock(), self.last_run)
        if "SnapshotDurationSeconds" not in values:  # after a restart: the volume's record
            durations = [
                float(r["duration_seconds"])
                for r in read_records(self.root)
                if r.get("state") == "completed" and r.get("duration_seconds") is not None
            ]
            if durations:
                values["SnapshotDurationSeconds"] = durations[-1]
        return values


def _replace(run: SnapshotRun, **changes: Any) -> SnapshotRun:
    return dataclasses.replace(run, **changes)


# -- wiring -----------------------------------------------------------------------------


def _snapshot_tags(tags: dict[str, str]) -> TagSpecificationTypeDef:
    return {
        "ResourceType": "snapshot",
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }
