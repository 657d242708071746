"""The write path with the daemon's commit stage, and objects queued as S3 would: what the
functional tests of the commit stage and of the requests per object set up alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from agent.aws import Clients
from agent.config import Config
from agent.pipeline.backup import BackupService
from agent.pipeline.commit import Committer
from agent.runtime.wiring import compression_settings
from agent.storage.barrier import Barrier
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support import service
from tests.support.aws import BUCKET, QUEUE_URL
from tests.support.events import notification, s3_record

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import PutObjectRequestTypeDef


def committing_service(
    aws: Clients,
    config: Config,
    volume: Volume,
    ledger: Ledger,
    *,
    barrier: Barrier | None = None,
    **committer_options: Any,
) -> BackupService:
    """The configured write path whose records go through a `Committer` (its
    `committer_options`: linger, batch limit) to the volume's journal and `ledger`."""
    journal = Journal(volume.journal_dir)
    return service.make_service(
        aws,
        volume,
        compression=compression_settings(config),
        journal=journal,
        ledger=ledger,
        committer=Committer(journal, ledger, **committer_options),
        **({"barrier": barrier} if barrier is not None else {}),
    )


def put_and_queue(
    aws: Clients, objects: Iterable[tuple[str, bytes]], tags: Mapping[str, str] | None = None
) -> None:
    """Put the objects (a key in `tags` with that tagging), then queue their events in
    order: moto's own are dropped, the real-shaped ones (tests/support/events.py) sent."""
    records = []
    for key, body in objects:
        request: PutObjectRequestTypeDef = {"Bucket": BUCKET, "Key": key, "Body": body}
        if tags and key in tags:
            request["Tagging"] = tags[key]
        put = aws.s3.put_object(**request)
        records.append(s3_record(key, size=len(body), eTag=put["ETag"].strip('"'), sequencer="0A"))
    while messages := aws.sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10).get(
        "Messages"
    ):
        for message in messages:
            aws.sqs.delete_message(QueueUrl=QUEUE_URL, ReceiptHandle=message["ReceiptHandle"])
    for record in records:
        aws.sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=notification(record))
