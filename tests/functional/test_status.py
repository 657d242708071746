"""`backup-agent status`: what the agent publishes, read back while it runs or is stopped."""

from __future__ import annotations

import json

from agent.cli.agent import main
from agent.cli.common import StatusCode
from agent.config import queue_name
from agent.runtime.agent_state import AgentState
from agent.stats import Stats
from tests.functional.test_lifecycle_cli import write_config
from tests.support.aws import QUEUE_URL
from tests.support.lifecycle import put


def _status(config_file, capsys, *extra):
    code = main(["status", "--config", config_file, "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_a_never_started_agent_is_down_and_no_reconcile_is_said_plainly(
    aws, volume, backup_root, tmp_path, capsys
):
    config_file = write_config(tmp_path, backup_root)

    assert main(["status", "--config", config_file]) == StatusCode.DOWN
    out = capsys.readouterr().out
    assert "health:      DOWN" in out
    assert "agent:       never started" in out
    assert "no reconcile has ever run" in out
    assert "queue:       0 waiting, 0 in flight; dead-letter queue: 0" in out


def test_a_running_agent_after_a_reconcile_is_ok(aws, volume, backup_root, tmp_path, capsys):
    config_file = write_config(tmp_path, backup_root)
    put(aws, "a.txt", b"alpha")
    assert main(["reconcile", "--config", config_file]) == 0
    stats = Stats()
    stats.record_success("copied", 5, 5, lag=1.5)
    AgentState(volume, stats).publish()
    capsys.readouterr()

    code, report = _status(config_file, capsys)

    assert code == StatusCode.OK, report["problems"]
    assert report["health"] == "ok"
    assert report["agent"]["state"] == "running"
    assert report["agent"]["last_lag_seconds"] == 1.5
    assert report["volume"]["marker"] == "vol-test" and report["volume"]["free_bytes"] > 0
    assert report["jobs"]["reconcile"]["outcome"] == "ok"
    assert report["jobs"]["gc"] is None and report["jobs"]["snapshot"] == "disabled"
    # the put notified the queue; nothing consumes it here
    assert report["queue"] == {"url": QUEUE_URL, "visible": 1, "in_flight": 0, "dead_letter": 0}


def test_dead_letters_failures_and_a_pause_make_it_degraded(
    aws, volume, backup_root, tmp_path, capsys
):
    config_file = write_config(tmp_path, backup_root)
    assert main(["reconcile", "--config", config_file]) == 0
    dlq = aws.sqs.get_queue_url(QueueName=queue_name(QUEUE_URL) + "-dlq")["QueueUrl"]
    aws.sqs.send_message(QueueUrl=dlq, MessageBody="{}")
    stats = Stats()
    stats.record_failure("AccessDenied")
    AgentState(volume, stats, paused=lambda: "volume 95% full").publish()
    capsys.readouterr()

    code, report = _status(config_file, capsys)

    assert code == StatusCode.DEGRADED
    assert report["agent"]["state"] == "paused"
    problems = "\n".join(report["problems"])
    assert "paused: volume 95% full" in problems
    assert "dead-letter queue: 1 message(s)" in problems
    assert "1 failed in the last hour" in problems


def test_a_stopped_agent_and_a_missing_volume_are_down_without_aws(
    volume, backup_root, tmp_path, capsys
):
    config_file = write_config(tmp_path, backup_root)
    AgentState(volume, Stats()).publish(stopped=True)

    code, report = _status(config_file, capsys, "--offline")
    assert code == StatusCode.DOWN
    assert report["agent"]["state"] == "stopped"

    (backup_root / ".backup-agent-volume").unlink()
    code, report = _status(config_file, capsys, "--offline")
    assert code == StatusCode.DOWN
    assert any("no .backup-agent-volume marker" in p for p in report["problems"])


def test_an_agent_that_died_is_not_running(volume, backup_root, tmp_path, capsys):
    config_file = write_config(tmp_path, backup_root)
    state = AgentState(volume, Stats())
    state.publish()
    document = json.loads(state.file.path.read_text())
    document["pid"] = 2**22 + 1  # above the kernel's pid_max: never a live process
    state.file.save(document)

    code, report = _status(config_file, capsys, "--offline")

    assert code == StatusCode.DOWN and report["agent"]["state"] == "not running"


def test_failures_last_hour_counts_only_the_last_hour(volume):
    now = [1000.0]
    stats = Stats()
    state = AgentState(volume, stats, clock=lambda: now[0])
    stats.record_failure("x")
    assert state.document()["failures_last_hour"] == 1  # counted from the start
    now[0] += 1800
    stats.record_failure("x")
    assert state.document()["failures_last_hour"] == 2
    now[0] += 3700  # the first two are older than an hour
    assert state.document()["failures_last_hour"] == 0


def test_a_failed_job_run_is_recorded_and_degrades(volume):
    from agent.lifecycle.context import job_lock, last_run

    try:
        with job_lock(volume, "gc"):
            raise OSError("disk on fire")
    except OSError:
        pass
    assert last_run(volume, "gc")["outcome"] == "failed: OSError: disk on fire"
    with job_lock(volume, "gc", record=False):
        pass
    assert last_run(volume, "gc")["outcome"].startswith("failed")


def test_the_daemon_publishes_its_state_at_start_and_at_stop(aws, config, volume):
    import os
    import threading

    from agent.runtime.daemon import Daemon
    from agent.storage.ledger import Ledger
    from tests.support.aws import BUCKET, TABLE
    from tests.support.waiting import wait_until

    daemon = Daemon(config, aws)
    path = volume.root / "state" / "agent.json"
    exit_codes: list[int] = []
    runner = threading.Thread(target=lambda: exit_codes.append(daemon.run()))
    runner.start()
    try:
        wait_until(path.exists, what="state/agent.json at start")
        running = json.loads(path.read_text())
        assert running["pid"] == os.getpid() and running["stopped"] is None
        aws.s3.put_object(Bucket=BUCKET, Key="k.txt", Body=b"data")
        wait_until(lambda: Ledger(aws.dynamodb, TABLE).latest(BUCKET, "k.txt"), what="backup")
    finally:
        daemon.request_stop()
        runner.join(30)
    assert exit_codes == [0]
    stopped = json.loads(path.read_text())
    assert stopped["stopped"] and stopped["backed_up"] == 1 and stopped["last_success"]
    assert stopped["failures_last_hour"] == 0 and stopped["paused"] is False
