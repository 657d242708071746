"""The Daemon in-process: waits for its volume, cleans crash leftovers, runs, stops with 0."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import agent.runtime.daemon as daemon_module
from agent.aws import Clients
from agent.cli import agent as cli
from agent.cli.common import ExitCode, exit_code_for
from agent.errors import VolumeNotInitialised
from agent.runtime.daemon import Daemon
from agent.storage.ledger import Ledger
from agent.storage.volume import MARKER_NAME, Volume
from tests.support.aws import BUCKET, TABLE, make_config
from tests.support.tmpfs import small_filesystem
from tests.support.waiting import wait_until

NO_AWS = Clients(s3=None, sqs=None, dynamodb=None)


@pytest.fixture
def quick_volume_retries(monkeypatch):
    monkeypatch.setattr(daemon_module, "VOLUME_RETRY_SECONDS", 0.05)


def test_temp_files_left_by_a_crash_are_removed_and_reported_at_start_up(config, volume):
    for name in ("1" * 32 + ".part", "2" * 32 + ".part"):  # write_copy's names: uuid4 hex
        (volume.tmp_dir / name).write_bytes(b"interrupted copy")
    with capture_logs() as logs:
        marker = Daemon(config, NO_AWS).wait_for_volume()
    assert marker is not None and marker.volume_id == "vol-test"
    assert list(volume.tmp_dir.iterdir()) == []
    assert {"event": "volume.temp_files_removed", "count": 2, "log_level": "info"} in logs


def test_the_daemon_waits_for_the_volume_marker_and_says_why(
    config, backup_root, quick_volume_retries
):
    daemon = Daemon(config, NO_AWS)
    result: list[object] = []
    with capture_logs() as logs:
        waiter = threading.Thread(target=lambda: result.append(daemon.wait_for_volume()))
        waiter.start()
        wait_until(lambda: any(e["event"] == "volume.not_ready" for e in logs), what="report")
        assert waiter.is_alive()  # still waiting: nothing is written to the bare root
        Volume(backup_root).initialise("vol-late")
        waiter.join(10)
    assert result[0].volume_id == "vol-late"
    not_ready = [e for e in logs if e["event"] == "volume.not_ready"]
    assert len(not_ready) == 1  # reported once, not once per retry
    assert "run: backup-agent init-volume" in not_ready[0]["reason"]
    assert any(e["event"] == "volume.ready" for e in logs)


class RecordingNotifier:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    def status(self, status: str) -> None:
        self.statuses.append(status)

    def ping_interval(self, default: float) -> float:
        return default

    def watchdog(self, status: str | None = None) -> None:
        """Nothing."""


def test_a_mounted_volume_without_its_marker_fails_at_once_naming_init_volume(config, backup_root):
    """init-volume skipped: the root is a mount point with no marker. Waiting cannot fix that,
    so the start fails within a moment (exit 3, not restarted by the unit) with the command to
    run in STATUS=, the log and the alert, instead of `systemctl start` blocking for ever."""
    alerts: list[tuple[str, str]] = []
    notifier = RecordingNotifier()
    with small_filesystem(backup_root, "4m"):
        daemon = Daemon(
            config,
            NO_AWS,
            notifier=notifier,  # type: ignore[arg-type]
            alert=lambda subject, detail: alerts.append((subject, detail)),
        )
        with capture_logs() as logs, pytest.raises(VolumeNotInitialised) as raised:
            daemon.wait_for_volume()  # VOLUME_RETRY_SECONDS is 10 s: no retry happened
        assert list(backup_root.iterdir()) == []  # nothing written to the bare volume
    assert "run `backup-agent init-volume`" in str(raised.value)
    assert exit_code_for(raised.value) == ExitCode.VOLUME_NOT_READY == 3
    (event,) = [e for e in logs if e["event"] == "volume.not_initialised"]
    assert event["log_level"] == "error" and "init-volume" in event["reason"]
    assert notifier.statuses == [str(raised.value)]
    assert alerts == [("backup volume not initialised", str(raised.value))]


def test_backup_agent_run_exits_3_with_one_line_naming_init_volume(
    aws, backup_root, tmp_path, capsys, monkeypatch
):
    """What `systemctl start` reports: the process ends with 3, its last words on stderr (the
    journal) say which command to run; no traceback, no wait."""
    import json

    import yaml

    config = make_config(
        backup_root, metrics={"prometheus": None, "cloudwatch": False, "instance_id": "i-0"}
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    monkeypatch.setattr("agent.cli.agent.build_clients", lambda _config: aws)
    monkeypatch.setattr("agent.logs.configure", lambda *a, **k: None)  # keep pytest's capture
    with small_filesystem(backup_root, "4m"):
        code = cli.main(["run", "--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err[-1].startswith("backup-agent: backup volume not ready: backup volume")
    assert "run `backup-agent init-volume`" in err[-1]


def test_the_unit_does_not_restart_an_agent_whose_volume_is_not_initialised():
    unit = (Path(__file__).parents[2] / "systemd" / "backup-agent.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("RestartPreventExitStatus=")]
    assert str(int(ExitCode.VOLUME_NOT_READY)) in line.split("=", 1)[1].split()


def test_a_stop_while_waiting_for_the_volume_returns_cleanly(config, quick_volume_retries):
    daemon = Daemon(config, NO_AWS)
    daemon.request_stop()
    assert daemon.wait_for_volume() is None
    assert not (config.storage.root / MARKER_NAME).exists()


def test_run_backs_up_and_returns_0_when_asked_to_stop(aws, config, volume):
    daemon = Daemon(config, aws)
    exit_codes: list[int] = []
    runner = threading.Thread(target=lambda: exit_codes.append(daemon.run()))
    runner.start()
    try:
        wait_until(lambda: daemon.consumer is not None, what="the consumer started")
        # the consumer tells the commit stage what is under way (its linger, issue 19)
        assert daemon.service is not None and daemon.service.committer is not None
        assert daemon.consumer._committer is daemon.service.committer
        aws.s3.put_object(Bucket=BUCKET, Key="via daemon.txt", Body=b"daemon " * 100)
        ledger = Ledger(aws.dynamodb, TABLE)
        wait_until(lambda: ledger.latest(BUCKET, "via daemon.txt"), what="the backup")
    finally:
        daemon.request_stop()
        runner.join(30)
    assert exit_codes == [0]
    for thread in daemon.consumer._threads:
        thread.join(10)


class Exited(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _raise_exited(code: int) -> None:
    raise Exited(code)


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_the_first_signal_asks_for_a_drain_and_the_second_exits_at_once(
    config, monkeypatch, restore_signal_handlers
):
    monkeypatch.setattr(daemon_module.os, "_exit", _raise_exited)
    daemon = Daemon(config, NO_AWS)
    daemon.install_signal_handlers()
    with capture_logs() as logs:
        signal.raise_signal(signal.SIGTERM)
        assert daemon.stopping.is_set()  # warm: run() now drains and returns 0
        with pytest.raises(Exited) as exited:
            signal.raise_signal(signal.SIGINT)
    assert exited.value.code == daemon_module.EXIT_IMMEDIATELY == 130
    assert [e["event"] for e in logs] == ["agent.stop_requested", "agent.stop_now"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the point
def test_run_exits_with_an_error_when_the_receiver_thread_dies(aws, config, volume):
    def broken_receive(**_kwargs):
        raise RuntimeError("a bug outside the AWS error handling")

    daemon = Daemon(config, aws)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_until(lambda: daemon.consumer is not None, what="the consumer started")
        aws.sqs.meta.events.register("before-call.sqs.ReceiveMessage", broken_receive)
        wait_until(lambda: not runner.is_alive(), timeout=20, what="run() giving up")
    finally:
        daemon.request_stop()
        runner.join(30)
    assert [type(e).__name__ for e in errors] == ["BackupAgentError"]
    assert "consumer thread died" in str(errors[0])
