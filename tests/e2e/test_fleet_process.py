"""Three real agents on one queue and one table, one of them killed with SIGKILL mid-run.

Its in-flight messages come back when their visibility timeout ends and the others finish
them; every version ends up recorded once, on a volume that holds its copy; the killed
member's heartbeat is flagged by `status --fleet`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.e2e.conftest import make_stack, write_stack_config
from tests.support.aws import BUCKET, TABLE
from tests.support.events import notification, s3_record
from tests.support.local_aws import FAKE_CREDENTIALS, AgentProcess
from tests.support.waiting import wait_until

OBJECTS = 60
SECTIONS = {
    "queue": {"visibility_timeout": 10, "wait_time_seconds": 1},
    "consumer": {"workers": 2, "drain_timeout": 10},
    "schedules": {"fleet-heartbeat": "1s"},
}


def test_three_agents_one_killed_every_version_recorded_once_and_the_dead_flagged(
    tmp_path, moto_server
):
    (tmp_path / "member-0").mkdir()
    stack = make_stack(tmp_path / "member-0", moto_server, init_volume=False, **SECTIONS)
    s3, sqs = stack.clients.s3, stack.clients.sqs
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    # moto's own events carry no versionId: send the events real S3 would
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    configs, volumes = [], []
    for n in range(3):
        workdir = tmp_path / f"member-{n}"
        workdir.mkdir(exist_ok=True)
        configs.append(write_stack_config(workdir, moto_server.endpoint, **SECTIONS))
        volume = Volume(workdir / "volume")
        volume.initialise(f"vol-{n}")
        volumes.append(volume)
    versions: dict[str, str] = {}
    for n in range(OBJECTS):
        key = f"data/object-{n:03d}.bin"
        body = bytes([n]) * (200_000 + n)  # large enough that a kill lands mid-copy
        versions[key] = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"]
        record = s3_record(
            key, bucket=BUCKET, size=len(body), versionId=versions[key], sequencer=f"{n + 1:016X}"
        )
        sqs.send_message(QueueUrl=stack.config.queue.url, MessageBody=notification(record))

    agents = [AgentProcess(path, path.parent / "agent.log").start() for path in configs]
    try:
        victim = agents[0]
        victim.wait_for("backup.stored", count=3, timeout=60)
        victim.stop(sig=signal.SIGKILL)
        ledger = Ledger(stack.clients.dynamodb, TABLE)

        def all_recorded() -> bool:
            return all(
                [r.version_id for r in ledger.versions(BUCKET, key)] == [version]
                for key, version in versions.items()
            )

        wait_until(all_recorded, timeout=120, what="every version recorded")
        wait_until(lambda: stack.queue_depth() == (0, 0), timeout=60, what="queue drained")

        by_id = {v.read_marker().volume_id: v for v in volumes}
        for key in versions:
            [record] = ledger.versions(BUCKET, key)
            assert by_id[record.volume_id].has_copy(record.sha256 or "")
        journals = {
            name: [r.key for r in Journal(v.journal_dir).read_all()] for name, v in by_id.items()
        }
        for name in ("vol-1", "vol-2"):  # the survivors copied nothing twice
            assert len(journals[name]) == len(set(journals[name]))
        survivors = set(journals["vol-1"]) | set(journals["vol-2"])
        assert not survivors & set(journals["vol-0"]) - _unrecorded(ledger, journals["vol-0"])
        for agent in agents[1:]:
            assert agent.process is not None and agent.process.poll() is None

        def status() -> dict:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "agent.cli.agent",
                    "status",
                    "--fleet",
                    "--json",
                    "--config",
                    str(configs[1]),
                ],
                capture_output=True,
                env={**FAKE_CREDENTIALS, "PATH": "/usr/bin:/bin"},
                check=False,
            )
            return {"code": result.returncode, **json.loads(result.stdout)}

        wait_until(lambda: status()["code"] == 2, timeout=30, what="the dead member flagged")
        report = status()
        missing = {m["volume_id"]: m["missing"] for m in report["members"]}
        assert missing == {"vol-0": True, "vol-1": False, "vol-2": False}
    finally:
        for agent in agents:
            agent.stop(timeout=30)


def _unrecorded(ledger: Ledger, keys: list[str]) -> set[str]:
    """Keys the killed member journalled but whose ledger record names another volume: it
    died between its journal line and its ledger write, and a survivor copied them."""
    return {key for key in keys if [r.volume_id for r in ledger.versions(BUCKET, key)] != ["vol-0"]}
