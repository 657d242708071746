"""The composition root's recipes: which client, volume, journal and ledger go where.

`backup-agent run` (agent/runtime/daemon.py) and the one-shot commands (agent/cli/) build
their pieces only through these functions, so the write path, the consumer's settings
and the lifecycle jobs' context are assembled the same way in every process.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent import __version__
from agent.audit.cloudwatch import LogsShipper
from agent.audit.inventory import InventoryExport
from agent.audit.trail import AuditTrail
from agent.aws import Clients
from agent.categories import Categories
from agent.config import Config, queue_name, replica_group
from agent.errors import ConfigError
from agent.fleet.heartbeat import Figures, Heartbeat, Identity
from agent.fleet.registry import Registry
from agent.imds import Imds, MetadataUnavailable
from agent.lifecycle.context import LifecycleContext, job_lock
from agent.lifecycle.gc import GarbageCollector
from agent.lifecycle.pressure import PressureRetention, pressure_policy
from agent.lifecycle.retention import Retention
from agent.pipeline.backup import BackupService
from agent.pipeline.commit import Committer
from agent.pipeline.consumer import ConsumerSettings
from agent.pipeline.pause import VolumeCheck
from agent.records import Rejections
from agent.snapshots.manager import SnapshotManager
from agent.stats import RECORDS_REJECTED, Stats
from agent.storage.barrier import WriteBarrier
from agent.storage.encryption import AlertHook
from agent.storage.grow import VolumeGrower
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import CompressionSettings, Volume
from agent.storage.volume_id import discover_volume_id


def state_directory() -> Path | None:
    """systemd's StateDirectory= for the daemon (`$STATE_DIRECTORY`, the first if it lists
    several; /var/lib/backup-agent): on the root file system, so a full backup volume does
    not stop what is kept there (the forecast's history, the grow request). None outside
    systemd: those are then not kept."""
    first = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if os.path.isabs(first) else None


def compression_settings(config: Config) -> CompressionSettings:
    """The configured compression. Each copy keeps the settings it started with (a reload
    gives new copies new ones), and the frame budget prices its frames at its level
    (frame_budget.py), so nothing process-wide is set here."""
    return CompressionSettings(
        level=config.storage.compression_level,
        threads=config.storage.compression_threads,
        chunk_bytes=config.storage.chunk_bytes,
    )


def member_ledger(
    config: Config, clients: Clients, volume_id: str, rejections: Rejections | None = None
) -> Ledger:
    """The ledger as a member writes it for the volume `volume_id`: its records name that
    volume, and with `fleet.replicas` > 1 as its replica group's holder (the group is the
    queue's name). The write path and `backup-agent adopt-volume` both use it: a ledger
    without the group records versions no replica group holds (docs/fleet.md "Replicas")."""
    return Ledger(
        clients.dynamodb,
        config.state.table,
        rejections=rejections,
        group=replica_group(config),
        volume_id=volume_id,
    )


def backup_service(
    config: Config, clients: Clients, volume: Volume, volume_id: str, stats: Stats | None = None
) -> BackupService:
    """The write path as configured: the daemon's and the lifecycle jobs' one recipe.
    Records its journal and ledger reject are counted in `stats` (``records.rejected``)."""
    rejections = Rejections(on_reject=lambda _: stats.count(RECORDS_REJECTED) if stats else None)
    journal = Journal(volume.journal_dir, rejections=rejections)
    ledger = member_ledger(config, clients, volume_id, rejections)
    return BackupService(
        s3=clients.s3,
        volume=volume,
        journal=journal,
        ledger=ledger,
        volume_id=volume_id,
        buckets=frozenset(config.buckets),
        compression=compression_settings(config),
        expected_bucket_owner=config.aws.expected_bucket_owner,
        barrier=WriteBarrier(volume.root),  # shared with `backup-agent snapshot`
        stats=stats,
        record_tags=config.storage.record_tags,
        categories=Categories.of_config(config.categories),
        # the consumer's copies are recorded by the commit stage (agent/pipeline/commit.py);
        # its thread starts with the first one, so jobs alone never start it
        committer=Committer(journal, ledger, directories=volume.sync_directories),
        recent_versions=config.consumer.recent_versions,
    )


def consumer_settings(config: Config) -> ConsumerSettings:
    return ConsumerSettings(
        queue_url=config.queue.url,
        workers=config.consumer.workers,
        wait_time_seconds=config.queue.wait_time_seconds,
        visibility_timeout=int(config.queue.visibility_timeout.total_seconds()),
        max_messages=config.queue.max_messages,
        max_bytes_in_flight=config.consumer.max_bytes_in_flight,
        max_receive_count=config.queue.max_receive_count,
        retry_base_seconds=config.queue.retry_base_seconds,
        retry_max_seconds=config.queue.retry_max_seconds,
        receive_ahead=config.consumer.receive_ahead,
        hold_back_seconds=config.storage.hold_back.total_seconds(),
        pause_recheck_max=config.storage.pause_recheck_max.total_seconds(),
    )


def volume_check(config: Config, volume: Volume) -> VolumeCheck:
    """When the consumer pauses for low space or a missing volume, and when it resumes."""
    return VolumeCheck(volume, resume_headroom=config.storage.resume_headroom_bytes)


def lifecycle_context(
    config: Config,
    clients: Clients,
    volume: Volume,
    volume_id: str,
    *,
    service: BackupService | None = None,
    stats: Stats | None = None,
) -> LifecycleContext:
    """What reconcile, retention, gc and scrub share; the daemon passes its own service."""
    stats = stats or Stats()
    service = service or backup_service(config, clients, volume, volume_id, stats)
    return LifecycleContext(
        config=config,
        clients=clients,
        volume=volume,
        volume_id=volume_id,
        journal=service.journal,
        ledger=service.ledger,
        service=service,
        stats=stats,
    )


def pressure_retention(ctx: LifecycleContext) -> PressureRetention:
    """`retention.when_full` (set): the normal rules, the stricter minimums, then a GC with
    the pressure grace period, all under the volume's gc job lock, as every gc run is (not
    recorded as a gc run in `state/last-gc.json`: `status` shows the gc job's own runs)."""
    when_full = ctx.config.retention.when_full
    assert when_full is not None
    collector = GarbageCollector(
        volume=ctx.volume,
        journal=ctx.journal,
        grace_period=when_full.gc_grace_period,
        stats=ctx.stats,
    )
    return PressureRetention(
        rules=Retention.from_context(ctx),
        strict=pressure_policy(ctx.config.retention),
        collect=collector.run_once,
        exclusive=lambda: job_lock(ctx.volume, "gc", record=False),
    )


def volume_grower(
    config: Config, clients: Clients, state_dir: Path, alert: AlertHook
) -> VolumeGrower:
    """`storage.auto_grow`: ModifyVolume on the backup volume, the request in `state_dir`."""
    ec2 = clients.ec2()
    root = config.storage.root

    def volume_id() -> str:
        return discover_volume_id(root, configured=config.storage.volume_id, imds=Imds(), ec2=ec2)

    return VolumeGrower(
        ec2,
        config.storage.auto_grow,
        volume_id=volume_id,
        root=root,
        state_dir=state_dir,
        alert=alert,
        clock=lambda: datetime.now(UTC),
    )


def open_lifecycle_context(config: Config, clients: Clients) -> LifecycleContext:
    """Open the volume (raises VolumeNotReady) and wire the pieces a one-shot job uses."""
    volume = Volume(config.storage.root, min_free_bytes=config.storage.min_free_bytes)
    marker = volume.read_marker()
    return lifecycle_context(config, clients, volume, marker.volume_id)


def snapshot_manager(
    config: Config,
    clients: Clients,
    *,
    on_alert: AlertHook | None = None,
    clock: Callable[[], datetime] | None = None,
) -> SnapshotManager:
    """The manager as the daemon's job and `backup-agent snapshot` use it."""
    ec2 = clients.ec2()
    root = config.storage.root
    copy_to = config.snapshots.copy_to_region
    copy_ec2 = clients.ec2(copy_to) if copy_to else None

    def volume_id() -> str:
        return discover_volume_id(root, configured=config.storage.volume_id, imds=Imds(), ec2=ec2)

    return SnapshotManager(
        ec2,
        clock or (lambda: datetime.now(UTC)),
        settings=config.snapshots,
        volume_id=volume_id,
        region=config.aws.region,
        root=root,
        journal=Journal(Volume(root).journal_dir),
        barrier=WriteBarrier(root),
        dynamodb=clients.dynamodb,
        table=config.state.table,
        copy_ec2=copy_ec2,
        on_alert=on_alert,
    )


def audit_trail(
    config: Config,
    clients: Clients | None,
    root: Path | None,
    *,
    clock: Callable[[], datetime] | None = None,
) -> AuditTrail:
    """The audit trail: on the volume at `root` (None: no volume to write on), and shipped to
    `audit.log_group` when one is configured and AWS may be used (`clients`)."""
    shipper = None
    if config.audit.log_group and clients is not None:
        shipper = LogsShipper(clients.logs(), config.audit.log_group, socket.gethostname())
    if root is None:
        return AuditTrail(None, shipper=shipper, clock=clock)
    return AuditTrail.on_volume(root, shipper=shipper, clock=clock)


def inventory_export(config: Config, ctx: LifecycleContext) -> InventoryExport:
    """The Athena export as configured (inventory.bucket is required to run it)."""
    if not config.inventory.bucket:
        raise ConfigError(["inventory.bucket: not set (where the export goes)"])
    return InventoryExport(
        s3=ctx.clients.s3,
        ledger=ctx.ledger,
        journal=ctx.journal,
        volume=ctx.volume,
        bucket=config.inventory.bucket,
        prefix=config.inventory.prefix,
    )


def fleet_identity(volume_id: str, imds: Imds | None = None) -> Identity:
    """Who this member is: its instance id and AZ from instance metadata; off EC2 (tests,
    an operator's host) the host name and the volume id, so two agents on one host differ.
    `AWS_EC2_METADATA_DISABLED=true` (botocore's own switch) skips instance metadata."""
    instance_id: str | None = None
    zone: str | None = None
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true":
        imds = imds or Imds(timeout=1.0)
        try:
            instance_id, zone = imds.instance_id(), imds.availability_zone()
        except MetadataUnavailable:
            instance_id, zone = None, None
    member_id = instance_id or f"{socket.gethostname()}/{volume_id}"
    return Identity(member_id, instance_id, volume_id, zone, __version__)


def fleet_heartbeat(
    config: Config,
    clients: Clients,
    volume: Volume,
    volume_id: str,
    stats: Stats,
    *,
    interval_seconds: float,
    clock: Callable[[], datetime] | None = None,
    identity: Callable[[], Identity] | None = None,
) -> Heartbeat:
    """This agent's membership of the fleet on its queue, with the daemon's figures."""

    def figures() -> Figures:
        now = stats.snapshot()
        try:
            usage = shutil.disk_usage(volume.root)
            used: float | None = usage.used / usage.total if usage.total else None
        except OSError:
            used = None
        return Figures(
            paused_reason=now.paused_reason,
            disk_used_ratio=used,
            lag_seconds=now.last_lag_seconds,
            backed_up=now.backups_succeeded,
        )

    return Heartbeat(
        Registry(clients.dynamodb, config.state.table, queue_name(config.queue.url)),
        identity or (lambda: fleet_identity(volume_id)),
        interval_seconds=interval_seconds,
        clock=clock or (lambda: datetime.now(UTC)),
        figures=figures,
    )
