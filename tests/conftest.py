"""Shared fixtures: fake credentials, in-process moto (`mock_aws`), a ready config and volume."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from agent.aws import Clients
from agent.config import Config, parse_config
from agent.operations.bootstrap import Bootstrap
from agent.storage.volume import Volume

REGION = "us-east-1"
BUCKET = "company-documents"
TABLE = "backup-agent-objects"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/backup-events"


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever reaches real AWS: fake credentials, no profile, no IMDS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("BACKUP_AGENT_CONFIG", raising=False)


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


@pytest.fixture
def backup_root(tmp_path: Path) -> Path:
    root = tmp_path / "backups"
    root.mkdir()
    return root


@pytest.fixture
def config(backup_root: Path) -> Config:
    return make_config(backup_root)


@pytest.fixture
def volume(backup_root: Path) -> Volume:
    volume = Volume(backup_root)
    volume.initialise("vol-test")
    volume.open()
    return volume


@pytest.fixture
def aws(config: Config) -> Iterator[Clients]:
    """In-process moto with the bucket, queues, notification and table bootstrapped."""
    with bootstrapped_aws(config) as clients:
        yield clients


@contextlib.contextmanager
def bootstrapped_aws(config: Config) -> Iterator[Clients]:
    """`aws` for a config of the test's own (another queue setting, say)."""
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        clients = Clients(
            s3=session.client("s3"),
            sqs=session.client("sqs"),
            dynamodb=session.client("dynamodb"),
            session=session,
        )
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


def receive_all(clients: Clients, queue_url: str = QUEUE_URL) -> list[dict[str, Any]]:
    messages = clients.sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", [])
    return list(messages)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    os.environ.pop("BACKUP_AGENT_CONFIG", None)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that runs `cli.main()` points structlog at pytest's captured stream; undo it."""
    import logging

    import structlog

    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (
            isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler)
            and type(handler).__module__ == "logging"
        ):
            root.removeHandler(handler)
