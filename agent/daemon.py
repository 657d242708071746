"""The long-running agent: wires config, clients, volume, ledger and consumer together.

Start order: volume ready (marker checked, temp files removed) → consumer → READY=1.
Stop order (SIGTERM/SIGINT): stop receiving → drain in-flight work until the deadline →
release unfinished messages → exit 0. A second signal exits at once (nothing is lost:
undeleted messages simply become visible again).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from agent.aws import Clients
from agent.backup import BackupService
from agent.config import Config
from agent.consumer import Consumer, ConsumerSettings
from agent.errors import VolumeNotReady
from agent.journal import Journal
from agent.ledger import Ledger
from agent.notify import Notifier
from agent.stats import Stats
from agent.store import CompressionSettings, Volume, VolumeMarker

log = structlog.get_logger("agent.daemon")

VOLUME_RETRY_SECONDS = 10.0
MAIN_LOOP_SECONDS = 2.0
EXIT_IMMEDIATELY = 130


def compression_settings(config: Config) -> CompressionSettings:
    return CompressionSettings(
        level=config.storage.compression_level,
        threads=config.storage.compression_threads,
        chunk_bytes=config.storage.chunk_bytes,
    )


def consumer_settings(config: Config) -> ConsumerSettings:
    return ConsumerSettings(
        queue_url=config.queue.url,
        workers=config.consumer.workers,
        wait_time_seconds=config.queue.wait_time_seconds,
        visibility_timeout=config.queue.visibility_timeout,
        max_messages=config.queue.max_messages,
        max_bytes_in_flight=config.consumer.max_bytes_in_flight,
        max_receive_count=config.queue.max_receive_count,
        retry_base_seconds=config.queue.retry_base_seconds,
        retry_max_seconds=config.queue.retry_max_seconds,
    )


class Daemon:
    def __init__(
        self,
        config: Config,
        clients: Clients,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clients = clients
        self.notifier = notifier or Notifier()
        self.stats = Stats()
        self.volume = Volume(config.storage.root, min_free_bytes=config.storage.min_free_bytes)
        self.stopping = threading.Event()
        self._signals = 0
        self.consumer: Consumer | None = None
        self.service: BackupService | None = None

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        marker = self.wait_for_volume()
        if marker is None:
            return 0  # stopped before the volume was ready
        self.start(marker)
        self.notifier.ready(self.stats.status_line())
        log.info(
            "agent.started",
            volume_id=marker.volume_id,
            root=str(self.volume.root),
            queue=self.config.queue.url,
            workers=self.config.consumer.workers,
        )
        while not self.stopping.wait(MAIN_LOOP_SECONDS):
            self.notifier.watchdog(self.stats.status_line())
        self.stop()
        return 0

    def start(self, marker: VolumeMarker) -> None:
        self.service = BackupService(
            s3=self.clients.s3,
            volume=self.volume,
            journal=Journal(self.volume.journal_dir),
            ledger=Ledger(self.clients.dynamodb, self.config.state.table),
            volume_id=marker.volume_id,
            buckets=frozenset(self.config.buckets),
            compression=compression_settings(self.config),
            expected_bucket_owner=self.config.aws.expected_bucket_owner,
        )
        self.consumer = Consumer(
            self.clients.sqs, self.service.process, consumer_settings(self.config), stats=self.stats
        )
        self.consumer.start()

    def stop(self) -> None:
        self.notifier.stopping()
        if self.consumer is not None:
            self.consumer.stop(self.config.consumer.drain_timeout)
        log.info("agent.stopped", status=self.stats.status_line())

    def wait_for_volume(self) -> VolumeMarker | None:
        """Retry until the volume is mounted and marked; report, never crash-loop."""
        reported: str | None = None
        while not self.stopping.is_set():
            try:
                marker = self.volume.open()
            except VolumeNotReady as exc:
                if str(exc) != reported:
                    log.error(
                        "volume.not_ready", reason=str(exc), retry_seconds=VOLUME_RETRY_SECONDS
                    )
                    self.notifier.status(f"waiting for backup volume: {exc}")
                    reported = str(exc)
                self.stopping.wait(VOLUME_RETRY_SECONDS)
                self.notifier.watchdog()
                continue
            removed = self.volume.temp_files_removed  # open() already removed them
            if reported:
                log.info("volume.ready", root=str(self.volume.root))
            if removed:
                log.info("volume.temp_files_removed", count=removed)
            return marker
        return None

    # -- signals ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("agent.stop_now", signal=signal.Signals(signum).name)
            os._exit(EXIT_IMMEDIATELY)
        log.info("agent.stop_requested", signal=signal.Signals(signum).name)
        self.stopping.set()

    def request_stop(self) -> None:
        self.stopping.set()


Factory = Callable[[Config], Any]
