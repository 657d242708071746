"""The test suite's AWS: names, a valid config, bootstrapped in-process moto, queue helpers."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from moto import mock_aws

from agent.aws import Clients, session_clients
from agent.config import Config, parse_config
from agent.operations.bootstrap import Bootstrap

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef

REGION = "us-east-1"
BUCKET = "company-documents"
TABLE = "backup-agent-objects"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/backup-events"


def make_config(root: Path, **overrides: Any) -> Config:
    """A valid Config for tests; `overrides` replace whole top-level sections."""
    raw: dict[str, Any] = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL, "wait_time_seconds": 0, "retry_base_seconds": 1},
        "buckets": [BUCKET],
        "storage": {"root": str(root), "min_free_bytes": 0, "compression_threads": 1},
        "state": {"table": TABLE},
        "consumer": {"workers": 2, "drain_timeout": 10},
    }
    raw.update(overrides)
    return parse_config(raw)


@contextlib.contextmanager
def mocked_aws() -> Iterator[Clients]:
    """In-process moto with nothing in it yet (for tests of bootstrap itself). The clients
    are made as the agent makes them (`session_clients`: its timestamp and DynamoDB
    response parsers), so every test that uses them reads responses the agent's way."""
    with mock_aws():
        yield session_clients(boto3.session.Session(region_name=REGION))


@contextlib.contextmanager
def bootstrapped_aws(config: Config) -> Iterator[Clients]:
    """`aws` for a config of the test's own (another queue setting, say)."""
    with mocked_aws() as clients:
        Bootstrap(config, clients).run(create_buckets=True)
        _drain_test_events(clients)
        yield clients


def _drain_test_events(clients: Clients) -> None:
    """Setting a notification sends s3:TestEvent; tests start from an empty queue."""
    clients.sqs.purge_queue(QueueUrl=QUEUE_URL)


def queue_counts(sqs: Any, queue_url: str = QUEUE_URL) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


def count_sqs_calls(sqs: Any) -> Counter[str]:
    """A live count of the calls `sqs` makes, by operation name."""
    counted: Counter[str] = Counter()
    sqs.meta.events.register("before-call.sqs.*", lambda model, **_: counted.update([model.name]))
    return counted


def receive_all(clients: Clients, queue_url: str = QUEUE_URL) -> list[MessageTypeDef]:
    messages = clients.sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", [])
    return list(messages)
