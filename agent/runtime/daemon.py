"""The long-running agent: wires config, clients, volume, ledger and consumer together.

Start order: volume ready (marker checked, temp files removed) → monitoring (alerts,
Prometheus, scheduled jobs) → consumer → READY=1.
Stop order (SIGTERM/SIGINT): stop receiving → drain in-flight work until the deadline →
release unfinished messages → stop jobs, flush metrics and pending alerts → exit 0.
A second signal exits at once (nothing is lost: undeleted messages simply become visible
again). Stopping on an unexpected error alerts first, then stops in the same order.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from agent import logs
from agent.audit import actions
from agent.audit.auditor import Auditor
from agent.audit.identity import whoami
from agent.audit.records import Actor
from agent.aws import Clients
from agent.categories import Categories
from agent.config import Config, queue_name
from agent.errors import BackupAgentError, VolumeNotInitialised, VolumeNotReady
from agent.fleet.heartbeat import Heartbeat
from agent.fleet.member import FLEET_DIMENSION, MISSING_METRIC
from agent.lifecycle.context import run_exclusive
from agent.lifecycle.gc import GarbageCollector
from agent.lifecycle.pressure import PressureCheck, PressureReport
from agent.lifecycle.reconcile import Reconciler
from agent.lifecycle.retention import Retention
from agent.lifecycle.scrub import Scrubber
from agent.monitoring.alerts import integrity_failure
from agent.monitoring.metrics import Datapoint
from agent.monitoring.monitor import Monitoring
from agent.pipeline.backup import BackupService
from agent.pipeline.consumer import Consumer
from agent.pipeline.last_run import LastRun
from agent.runtime.agent_state import AgentState
from agent.runtime.reload import ConfigReloader
from agent.runtime.systemd import Notifier
from agent.runtime.wiring import (
    audit_trail,
    backup_service,
    compression_settings,
    consumer_settings,
    fleet_heartbeat,
    inventory_export,
    lifecycle_context,
    pressure_retention,
    snapshot_manager,
    state_directory,
    volume_check,
    volume_grower,
)
from agent.schedule import every
from agent.stats import Stats
from agent.storage.encryption import check_at_startup
from agent.storage.grow import VolumeGrower
from agent.storage.volume import Volume, VolumeMarker

log = structlog.get_logger("agent.daemon")

VOLUME_RETRY_SECONDS = 10.0
ALERT_FLUSH_SECONDS = 10.0  # for the "not initialised" alert before exiting
MAIN_LOOP_SECONDS = 2.0
EXIT_IMMEDIATELY = 130
HEARTBEAT_DEFAULT = "30s"


class Daemon:
    def __init__(
        self,
        config: Config,
        clients: Clients,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        alert: Callable[[str, str], None] | None = None,
        monitoring: Monitoring | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clients = clients
        self.notifier = notifier or Notifier()
        self.stats = Stats()
        self.volume = Volume(config.storage.root, min_free_bytes=config.storage.min_free_bytes)
        self.agent_state = AgentState(  # state/agent.json, for `backup-agent status`
            self.volume, self.stats, paused=lambda: self.stats.paused_reason
        )
        self.stopping = threading.Event()
        self._signals = 0
        self.consumer: Consumer | None = None
        self.service: BackupService | None = None
        self.heartbeat: Heartbeat | None = None
        self.monitoring = monitoring
        self._alert_hook = alert
        self.reloader: ConfigReloader | None = None
        self.grower: VolumeGrower | None = None
        self.auditor: Auditor | None = None  # made once the volume is ready
        if config_path is not None:
            self.reloader = ConfigReloader(config_path, config, on_rejected=self._config_rejected)
            self.reloader.subscribe(self.apply_live)
            self.reloader.subscribe(self._audit_reload)

    # -- start and stop --------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        if self.monitoring is None:
            self.monitoring = self.build_monitoring()
        self.monitoring.alerts.start()  # a volume that never mounts must still alert
        try:
            marker = self.wait_for_volume()
        except VolumeNotInitialised:
            # Nothing was started and nothing written to the volume: send the alert, go.
            self.monitoring.alerts.stop(timeout=ALERT_FLUSH_SECONDS)
            raise
        if marker is None:
            return 0  # stopped before the volume was ready
        try:
            self.start(marker)
        except Exception as exc:
            self._stopped_on_error(exc)
            raise
        self.notifier.ready(self.stats.status_line())
        self.agent_state.publish()
        log.info(
            "agent.started",
            volume_id=marker.volume_id,
            root=str(self.volume.root),
            queue=self.config.queue.url,
            workers=self.config.consumer.workers,
        )
        if self.reloader is not None:
            self.reloader.start()
        # In the background: a slow EC2 API must not hold up the watchdog pings below.
        threading.Thread(
            target=self.check_volume_encryption, name="encryption-check", daemon=True
        ).start()
        interval = self.notifier.ping_interval(MAIN_LOOP_SECONDS)
        try:
            while not self.stopping.wait(interval):
                if self.consumer is not None and not self.consumer.alive():
                    # No receiving, or no visibility extension: exit so systemd restarts us
                    # rather than feed the watchdog of an agent that backs nothing up.
                    raise BackupAgentError("a consumer thread died; see the traceback above")
                self.notifier.watchdog(self.stats.status_line())
                self.agent_state.tick()
        except Exception as exc:
            self._stopped_on_error(exc)
            raise
        self.stop()
        return 0

    def start(self, marker: VolumeMarker) -> None:
        self.auditor = self.build_auditor()
        self.service = backup_service(
            self.config, self.clients, self.volume, marker.volume_id, self.stats
        )
        if self.monitoring is None:
            self.monitoring = self.build_monitoring()
        self.register_lifecycle_jobs(marker)
        self.register_fleet_heartbeat(marker)
        self.monitoring.start()
        self.consumer = Consumer(
            self.clients.sqs,
            self.monitoring.observe(self.service.process),
            consumer_settings(self.config),
            stats=self.stats,
            on_gave_up=self.monitoring.on_gave_up,
            volume_check=volume_check(self.config, self.volume),
            listener=self.monitoring,
            last_run=LastRun(self.volume.root),
            # a small commit batch waits for the records the workers have under way
            committer=self.service.committer,
        )
        self.consumer.start()

    def build_monitoring(self) -> Monitoring:
        return Monitoring(
            self.config,
            self.clients,
            self.stats,
            workers=lambda: self.config.consumer.workers,
            workers_busy=lambda: self.consumer.working() if self.consumer else 0,
            forecast_history=self.forecast_history(),
            volume_grow=lambda: self.grower.state.value if self.grower else None,
        )

    @staticmethod
    def forecast_history() -> Path | None:
        state = state_directory()
        return state / "forecast.json" if state is not None else None

    def build_auditor(self) -> Auditor:
        """The daemon's audit trail; its STS identity is asked at the first record."""

        def who() -> Actor:
            try:
                sts = self.clients.sts()
            except BackupAgentError:
                sts = None  # clients without a session (tests): the Unix user only
            return whoami(sts)

        trail = audit_trail(self.config, self.clients, self.volume.root)
        return Auditor(trail, who)

    def register_lifecycle_jobs(self, marker: VolumeMarker) -> None:
        """Reconcile, retention, gc and scrub run on the scheduler when a schedule is set.

        They share the daemon's BackupService (its per-version locks) and Stats.
        """
        assert self.service is not None and self.monitoring is not None
        ctx = lifecycle_context(
            self.config,
            self.clients,
            self.volume,
            marker.volume_id,
            service=self.service,
            stats=self.stats,
        )
        audit = self.auditor or self.build_auditor()
        jobs: dict[str, tuple[Any, Callable[[], object]]] = {
            "reconcile": (
                self.config.reconcile.schedule,
                lambda: Reconciler.from_context(ctx, stop=self.stopping).run_once(),
            ),
            "retention": (
                self.config.retention.schedule,
                lambda: audit.around(
                    "retention", Retention.from_context(ctx).run_once, actions.retention
                ),
            ),
            "gc": (
                self.config.gc.schedule,
                lambda: audit.around("gc", GarbageCollector.from_context(ctx).run_once, actions.gc),
            ),
            "scrub": (
                self.config.scrub.schedule,
                lambda: audit.around(
                    "scrub",
                    Scrubber.from_context(ctx, on_alert=self._scrub_alert).run_once,
                    actions.scrub,
                ),
            ),
        }
        if self.config.inventory.bucket:
            jobs["inventory"] = (
                self.config.inventory.schedule,
                lambda: audit.around(
                    "inventory", inventory_export(self.config, ctx).run_once, actions.inventory
                ),
            )
        for name, (schedule, run) in jobs.items():
            if schedule is not None:
                # The same lock as `backup-agent gc` and friends: never two runs at once.
                self.monitoring.jobs.register(name, run_exclusive(self.volume, name, run), schedule)
        self.register_auto_grow()
        when_full = self.config.retention.when_full
        if when_full is not None:
            check = PressureCheck(
                check=volume_check(self.config, self.volume),
                paused=lambda: self.stats.paused_reason,
                can_grow=self.can_grow,
                make=lambda: pressure_retention(ctx),
                on_report=lambda report: self._pressure_report(report, audit),
            )
            self.monitoring.jobs.register(
                "retention-when-full",
                run_exclusive(self.volume, "retention", check),
                every(when_full.check_every),
            )
        if self.config.snapshots.enabled:
            self.register_snapshot_jobs()

    def register_fleet_heartbeat(self, marker: VolumeMarker) -> None:
        """Join the fleet on the queue (one beat at once), then beat on the scheduler:
        `schedules.fleet-heartbeat`, every 30 s unless set (agent/fleet/)."""
        assert self.monitoring is not None
        jobs = self.monitoring.jobs
        record = jobs.register("fleet-heartbeat", lambda: self._beat(), every(HEARTBEAT_DEFAULT))
        if record is None:
            return  # turned off (schedules.fleet-heartbeat: null)
        self.heartbeat = fleet_heartbeat(
            self.config,
            self.clients,
            self.volume,
            marker.volume_id,
            self.stats,
            interval_seconds=record.schedule.max_gap().total_seconds(),
        )
        # The first beat now, off the start path: IMDS and DynamoDB must not hold up READY=1.
        threading.Thread(
            target=jobs.run_now, args=("fleet-heartbeat",), name="fleet-join", daemon=True
        ).start()

    def _beat(self) -> None:
        if self.heartbeat is None or self.monitoring is None:
            return
        self.heartbeat.beat()
        publisher = self.monitoring.publisher
        if publisher is not None:  # the survivors report the missing (one alarm, fleet-wide)
            missing = self.heartbeat.missing_members()
            fleet = ((FLEET_DIMENSION, queue_name(self.config.queue.url)),)
            point = Datapoint(MISSING_METRIC, missing, "Count", datetime.now(UTC), fleet)
            publisher.add([point])

    def register_snapshot_jobs(self) -> None:
        """The scheduled EBS snapshot and its figures (age, count, duration) for CloudWatch."""
        assert self.monitoring is not None
        monitoring = self.monitoring
        manager = snapshot_manager(self.config, self.clients, on_alert=self.alert)
        # snapshots.schedule is the only source (config refuses schedules.snapshots): the
        # snapshot-age alarm (operations/alarms.py) allows this same schedule's longest gap.
        schedule = self.config.snapshots.schedule
        audit = self.auditor or self.build_auditor()
        monitoring.jobs.register(
            "snapshots",
            lambda: audit.around("snapshot", manager.run_scheduled, actions.scheduled_snapshot),
            schedule,
        )

        def publish_snapshot_metrics() -> None:
            now = datetime.now(UTC)
            units = {"SnapshotCount": "Count"}
            points = [
                Datapoint(name, value, units.get(name, "Seconds"), now)
                for name, value in manager.metrics().items()
            ]
            if monitoring.publisher is not None:
                monitoring.publisher.add(points)

        monitoring.jobs.register("snapshot-metrics", publish_snapshot_metrics, every("5m"))

    def register_auto_grow(self) -> None:
        """`storage.auto_grow`: the grow job, with its request file in $STATE_DIRECTORY,
        where the root-owned backup-agent-grow.path unit watches for it."""
        assert self.monitoring is not None
        settings = self.config.storage.auto_grow
        if not settings.enabled:
            return
        state = state_directory()
        if state is None:
            self.alert(
                "storage.auto_grow is on but cannot work",
                "no $STATE_DIRECTORY (run under the backup-agent systemd unit): the root unit"
                " that grows the filesystem watches a request file there",
            )
            return
        self.grower = volume_grower(self.config, self.clients, state, self.alert)
        self.monitoring.jobs.register("auto-grow", self.grower.step, every(settings.check_every))

    def can_grow(self) -> bool:
        """May the volume still grow soon (auto-grow on, below its cap, not waiting out
        EBS's rate or an error)? Retention under pressure waits while it may."""
        return self.grower is not None and self.grower.can_grow()

    def _pressure_report(self, report: PressureReport, audit: Auditor) -> None:
        """However the run ended: what it expired, alerted and in the audit trail (a
        retention record, and a gc record for its collection), like the scheduled jobs."""
        if report.failed is not None:
            subject = "retention.when_full failed while making room"
        else:
            subject = "retention.when_full expired versions to make room"
        try:
            self.alert(subject, report.summary())
        finally:
            if report.removed or report.failed is not None:  # else it changed nothing
                audit.record(lambda who, at: actions.when_full(report, who, at))
            gc = report.gc
            if gc is not None:
                audit.record(lambda who, at: actions.when_full_gc(gc, who, at))

    def _scrub_alert(self, event: str, details: dict[str, Any]) -> None:
        if self.monitoring is not None:
            where = str(details.get("sha256") or details.get("key") or event)
            self.monitoring.alerts.submit(integrity_failure(where, f"{event}: {details}"))

    def alert(self, subject: str, detail: str) -> None:
        """Operational alerts (volume not ready or unencrypted, rejected edits)."""
        if self._alert_hook is not None:
            self._alert_hook(subject, detail)
        if self.monitoring is not None:
            self.monitoring.alert(subject, detail)

    def stop(self) -> None:
        self.notifier.stopping()
        if self.reloader is not None:
            self.reloader.stop()
        if self.consumer is not None:
            self.consumer.stop(self.config.consumer.drain_timeout.total_seconds())
        if self.service is not None and self.service.committer is not None:
            self.service.committer.close(5.0)  # the consumer has drained or given back its work
        if self.monitoring is not None:
            self.monitoring.stop()  # after the drain: the last figures and alerts go out
        if self.heartbeat is not None:
            self.heartbeat.leave()  # after the jobs: no heartbeat follows it
        self.agent_state.publish(stopped=True)
        log.info("agent.stopped", status=self.stats.status_line())

    def _stopped_on_error(self, error: Exception) -> None:
        """Alert, then stop in order; the caller re-raises (systemd restarts the unit)."""
        log.error("agent.failed", error=str(error), error_type=type(error).__name__)
        if self.monitoring is not None:
            self.monitoring.agent_failed(error)
        try:
            self.stop()
        except Exception:
            log.exception("agent.stop_failed")

    def wait_for_volume(self) -> VolumeMarker | None:
        """Retry until the volume is mounted and marked; report, never crash-loop.

        One case is not waited for: the root is a mount point without the marker. The
        volume is there and was never initialised; only `backup-agent init-volume` fixes
        that, so this raises VolumeNotInitialised (exit 3, which the unit does not restart)
        and `systemctl start` fails at once, saying so, instead of blocking."""
        reported: str | None = None
        while not self.stopping.is_set():
            try:
                marker = self.volume.open()
            except VolumeNotReady as exc:
                if self._mounted_without_marker():
                    self._not_initialised()
                if str(exc) != reported:
                    log.error(
                        "volume.not_ready", reason=str(exc), retry_seconds=VOLUME_RETRY_SECONDS
                    )
                    self.notifier.status(f"waiting for backup volume: {exc}")
                    self.alert("backup volume not ready", str(exc))
                    reported = str(exc)
                self.stopping.wait(self.notifier.ping_interval(VOLUME_RETRY_SECONDS))
                self.notifier.watchdog()
                continue
            removed = self.volume.temp_files_removed  # open() already removed them
            if reported:
                log.info("volume.ready", root=str(self.volume.root))
            if removed:
                log.info("volume.temp_files_removed", count=removed)
            return marker
        return None

    def _mounted_without_marker(self) -> bool:
        try:
            return os.path.ismount(self.volume.root) and not self.volume.marker_path.exists()
        except OSError:
            return False  # cannot tell: keep waiting, as for any volume not ready

    def _not_initialised(self) -> None:
        root = self.volume.root
        message = (
            f"backup volume {root} is mounted but was never initialised (no"
            f" {self.volume.marker_path.name}): run `backup-agent init-volume` as the agent's"
            " user, then start the agent again"
        )
        log.error("volume.not_initialised", root=str(root), reason=message)
        self.notifier.status(message)
        self.alert("backup volume not initialised", message)
        raise VolumeNotInitialised(message)

    # -- live configuration and start-up checks ---------------------------------------

    def apply_live(self, old: Config, new: Config) -> None:
        """Apply what can change without a restart; in-flight work keeps its settings."""
        self.config = new
        if self.consumer is not None and new.consumer.workers != old.consumer.workers:
            self.consumer.set_workers(new.consumer.workers)
        if self.consumer is not None and new.consumer.receive_ahead != old.consumer.receive_ahead:
            self.consumer.set_receive_ahead(new.consumer.receive_ahead)
        if new.logging != old.logging:
            logs.configure(new.logging.level, new.logging.format)
        if self.service is not None and new.storage != old.storage:
            self.service.compression = compression_settings(new)
            self.service.record_tags = new.storage.record_tags
        if self.service is not None and new.categories != old.categories:
            self.service.categories = Categories.of_config(new.categories)  # for later versions
        if self.monitoring is not None:
            self.monitoring.forecast.threshold_days = new.alerts.days_until_full

    def _audit_reload(self, old: Config, new: Config) -> None:
        if self.auditor is not None:
            self.auditor.record(lambda who, at: actions.config_reload(old, new, who, at))

    def _config_rejected(self, problems: list[str]) -> None:
        if self._alert_hook is not None:
            self._alert_hook("configuration edit rejected", "; ".join(problems))
        if self.monitoring is not None:
            self.monitoring.config_rejected(str(self.config_path), problems)

    def check_volume_encryption(self) -> None:
        """The start-up check; its EC2 client is made only if the volume's id is known."""
        check_at_startup(
            self.clients.ec2, self.config.storage.volume_id, self.volume.root, self.alert
        )

    # -- signals ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_reload_signal(self, _signum: int, _frame: FrameType | None) -> None:
        if self.reloader is None:
            log.warning("config.reload_unavailable", reason="started without a config file")
            return
        self.reloader.request("SIGHUP", force=True)

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
