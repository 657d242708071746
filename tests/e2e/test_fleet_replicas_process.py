"""`fleet.replicas: 2` with real processes: two replica groups of two agents each, against
moto_server. Events go to the SNS topic bootstrap made; each group's queue gets them all;
every version ends on exactly two volumes, one per group, and the ledger names both.
"""

from __future__ import annotations

from agent.config import replica_groups
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.e2e.conftest import make_stack, write_stack_config
from tests.support.aws import BUCKET, TABLE
from tests.support.events import notification, s3_record
from tests.support.local_aws import AgentProcess
from tests.support.waiting import wait_until

OBJECTS = 30


def test_two_groups_of_two_agents_put_every_version_on_exactly_two_volumes(tmp_path, moto_server):
    def sections(group: int) -> dict:
        return {
            "queue": {
                "url": f"{moto_server.endpoint}/123456789012/backup-events-{group}",
                "wait_time_seconds": 1,
            },
            "fleet": {"replicas": 2},
        }

    (tmp_path / "g1-a").mkdir()
    stack = make_stack(tmp_path / "g1-a", moto_server, init_volume=False, **sections(1))
    groups = replica_groups(stack.config)
    assert groups is not None
    clients = stack.clients
    sqs, sns = clients.sqs, clients.sns()
    urls = {name: sqs.get_queue_url(QueueName=name)["QueueUrl"] for name in groups.queues}
    sqs.purge_queue(QueueUrl=urls[groups.queues[1]])  # the s3:TestEvent, through the topic
    clients.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    # moto's own events carry no versionId: publish the events real S3 would send
    clients.s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    topic = next(t["TopicArn"] for t in sns.list_topics()["Topics"])
    assert topic.endswith(":" + groups.topic)

    members = {}  # workdir name -> (config path, volume)
    for group in (1, 2):
        for member in ("a", "b"):
            workdir = tmp_path / f"g{group}-{member}"
            workdir.mkdir(exist_ok=True)
            path = write_stack_config(workdir, moto_server.endpoint, **sections(group))
            volume = Volume(workdir / "volume")
            volume.initialise(f"vol-{group}{member}")
            members[workdir.name] = (path, volume)
    versions: dict[str, str] = {}
    for n in range(OBJECTS):
        key = f"data/object-{n:03d}.bin"
        body = bytes([n]) * (20_000 + n)
        versions[key] = clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"]
        record = s3_record(
            key, bucket=BUCKET, size=len(body), versionId=versions[key], sequencer=f"{n + 1:016X}"
        )
        sns.publish(TopicArn=topic, Message=notification(record))

    agents = [AgentProcess(path, path.parent / "agent.log").start() for path, _ in members.values()]
    ledger = Ledger(clients.dynamodb, TABLE)
    try:

        def every_version_held_twice() -> bool:
            for key in versions:
                recorded = ledger.versions(BUCKET, key)
                if len(recorded) != 1 or len(recorded[0].holders or {}) != 2:
                    return False
            return True

        wait_until(every_version_held_twice, timeout=120, what="every version held twice")
        for name, url in urls.items():
            wait_until(
                lambda url=url: _depth(sqs, url) == (0, 0), timeout=60, what=f"{name} drained"
            )
    finally:
        for agent in agents:
            agent.stop(timeout=30)

    volumes = {v.read_marker().volume_id: v for _, v in members.values()}
    journals = {
        name: [r.key for r in Journal(v.journal_dir).read_all()] for name, v in volumes.items()
    }
    for key, version in versions.items():
        [record] = ledger.versions(BUCKET, key)
        assert record.version_id == version
        assert record.holders is not None and set(record.holders) == set(groups.queues)
        for group, volume_id in record.holders.items():
            assert volume_id[-2] == group[-1]  # vol-1a / vol-1b hold for group 1
            assert volumes[volume_id].has_copy(record.sha256 or "")
        copied_on = [name for name, keys in journals.items() if key in keys]
        assert sorted(copied_on) == sorted(record.holders.values())  # exactly two volumes
    for keys in journals.values():
        assert len(keys) == len(set(keys))  # no volume copied a version twice


def _depth(sqs, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )
