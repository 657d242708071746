"""Requests per small object with the default settings, by operation (issue 19).

docs/benchmarks.md counts every request the endpoint served during a benchmark run, which
includes what depends on time (visibility extensions, metrics) and so on the machine's load.
This counts the agent's own requests per object, by operation, for 100 objects already
queued: the breakdown docs/benchmarks.md explains. Against it: GetObjectTagging only for the
tagged version and the one request that proves the role may read tags (1ddc11d), one receive
per batch (receive ahead by default, 1c297d0).

The records go through the commit stage as in the daemon (agent/pipeline/commit.py): one
journal fsync and one ledger call per batch of records finished together: one
TransactWriteItems (`Ledger.record_many`) for the versions and LATEST items of the batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from agent.aws import Clients
from agent.config import Config
from agent.pipeline.backup import BackupService
from agent.pipeline.commit import Committer
from agent.pipeline.consumer import Consumer
from agent.pipeline.last_run import LastRun
from agent.runtime.wiring import consumer_settings
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import TABLE
from tests.support.aws_hooks import CallLog, record_calls
from tests.support.committing import committing_service, put_and_queue
from tests.support.waiting import wait_until

OBJECTS = 100


def queue_objects(aws: Clients, count: int) -> None:
    """`count` objects, one tagged, each with its event queued (moto's own are dropped)."""
    keys = [f"small/{n:04d}.txt" for n in range(count)]
    put_and_queue(aws, [(key, b"x" * 4096) for key in keys], tags={keys[count // 2]: "team=web"})


def committing(
    aws: Clients, config: Config, volume: Volume, **committer_options: Any
) -> tuple[BackupService, Committer]:
    """The write path with its commit stage to the volume's journal and the moto table."""
    backup = committing_service(
        aws, config, volume, Ledger(aws.dynamodb, TABLE), **committer_options
    )
    assert backup.committer is not None
    return backup, backup.committer


def test_a_small_object_costs_get_put_put_and_a_share_of_a_receive_and_a_delete(
    aws, config, volume, consumers, committers
):
    queue_objects(aws, OBJECTS)
    calls = CallLog()
    for client in (aws.s3, aws.sqs, aws.dynamodb):
        record_calls(client, calls)
    settings = replace(consumer_settings(config), workers=4)
    assert settings.receive_ahead  # the default
    backup, committer = committing(aws, config, volume)
    committers.append(committer)
    consumer = Consumer(aws.sqs, backup.process, settings, last_run=LastRun(volume.root))
    consumers.append(consumer)
    consumer.start()

    wait_until(lambda: len(calls.deleted_handles()) == OBJECTS, timeout=60, what="all deleted")
    consumer.stop(5)

    made = Counter(calls.operations())
    per_object = {op: round(n / OBJECTS, 2) for op, n in sorted(made.items())}
    print("requests per object:", per_object, "total", round(made.total() / OBJECTS, 2))
    print("commits:", committer.commits, "records:", committer.committed)
    assert committer.committed == OBJECTS  # every record went through the commit stage
    assert made["GetObject"] == OBJECTS
    # the tagged version, and the first few: every worker asks until one has proven that
    # tags may be read
    assert made["GetObjectTagging"] <= settings.workers + 1
    # batches, not one per freed worker (about 0.9 per object without receive_ahead); a
    # worker freed by the commit stage sooner makes some receives partial: 0.12-0.22 seen
    assert made["ReceiveMessage"] <= OBJECTS / 3
    assert made["DeleteMessageBatch"] <= OBJECTS / 2  # batched (how full depends on timing)
    # every version and its LATEST in one TransactWriteItems per batch (distinct keys)
    assert made["PutItem"] == 0
    assert made["TransactWriteItems"] == committer.commits
    assert made.total() / OBJECTS <= 2.0


def test_at_one_worker_records_are_committed_in_batches_not_one_by_one(
    aws, config, volume, consumers, committers
):
    """The daemon's wiring (the consumer tells the committer what may come: `expect`, `follow`), one
    worker. Without it a batch held what finished during the previous commit: mostly one
    record at 1 worker, one transaction per object. With it a batch ends only when full
    (`batch_limit`) or when the worker found no message received and waiting: at most once
    per receive. The linger is made long so that the count does not depend on timing."""
    queue_objects(aws, OBJECTS)
    calls = CallLog()
    for client in (aws.s3, aws.sqs, aws.dynamodb):
        record_calls(client, calls)
    settings = replace(consumer_settings(config), workers=1)
    backup, committer = committing(aws, config, volume, linger=3600, linger_ahead=3600)
    committers.append(committer)
    consumer = Consumer(
        aws.sqs, backup.process, settings, last_run=LastRun(volume.root), committer=committer
    )
    consumers.append(consumer)
    consumer.start()

    wait_until(lambda: len(calls.deleted_handles()) == OBJECTS, timeout=60, what="all deleted")
    consumer.stop(5)

    made = Counter(calls.operations())
    print("commits:", committer.commits, "records:", committer.committed, dict(made))
    assert committer.committed == OBJECTS
    assert made["TransactWriteItems"] == committer.commits
    # full batches, plus one per time the worker ran out of received messages
    assert committer.commits <= OBJECTS // committer.batch_limit + made["ReceiveMessage"] + 1
    assert committer.commits <= OBJECTS / 3  # not one per object
