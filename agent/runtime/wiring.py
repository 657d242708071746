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

from agent import __version__
from agent.aws import Clients
from agent.config import Config, queue_name
from agent.fleet.heartbeat import Figures, Heartbeat, Identity
from agent.fleet.registry import Registry
from agent.imds import Imds, MetadataUnavailable
from agent.lifecycle.context import LifecycleContext
from agent.pipeline.backup import BackupService
from agent.pipeline.consumer import ConsumerSettings
from agent.pipeline.pause import VolumeCheck
from agent.snapshots.manager import SnapshotManager
from agent.stats import Stats
from agent.storage.barrier import WriteBarrier
from agent.storage.encryption import AlertHook
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import CompressionSettings, Volume
from agent.storage.volume_id import discover_volume_id


def compression_settings(config: Config) -> CompressionSettings:
    return CompressionSettings(
        level=config.storage.compression_level,
        threads=config.storage.compression_threads,
        chunk_bytes=config.storage.chunk_bytes,
    )


def backup_service(
    config: Config, clients: Clients, volume: Volume, volume_id: str, stats: Stats | None = None
) -> BackupService:
    """The write path as configured: the daemon's and the lifecycle jobs' one recipe."""
    return BackupService(
        s3=clients.s3,
        volume=volume,
        journal=Journal(volume.journal_dir),
        ledger=Ledger(clients.dynamodb, config.state.table),
        volume_id=volume_id,
        buckets=frozenset(config.buckets),
        compression=compression_settings(config),
        expected_bucket_owner=config.aws.expected_bucket_owner,
        barrier=WriteBarrier(volume.root),  # shared with `backup-agent snapshot`
        stats=stats,
        record_tags=config.storage.record_tags,
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
