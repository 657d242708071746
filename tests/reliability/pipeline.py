"""In-process pipelines for the reliability suite: moto (`mock_aws`), the agent's own client
settings (retries and all), a real volume in tmp_path, `Consumer` + `BackupService`, and
`Faults`, which injects AWS failures through botocore event hooks.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody
from moto import mock_aws

from agent.aws import Clients, client_config
from agent.config import Config
from agent.operations.bootstrap import Bootstrap
from agent.pipeline.backup import BackupService
from agent.pipeline.consumer import Consumer
from agent.records import VersionRecord
from agent.runtime.wiring import compression_settings, consumer_settings
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import REGION

# -- the pipeline ----------------------------------------------------------------------------


@dataclass
class Pipeline:
    config: Config
    clients: Clients  # the test's own view of AWS (never faulted)
    agent_clients: Clients  # what the consumer and service use (Faults attach here)
    volume: Volume
    service: BackupService
    consumer: Consumer
    ledger: Ledger
    dlq_url: str
    gave_up: list[str] = field(default_factory=list)
    started: bool = False

    @property
    def queue_url(self) -> str:
        return self.config.queue.url

    def start(self) -> None:
        if not self.started:
            self.consumer.start()
            self.started = True

    def stop(self) -> None:
        if self.started:
            self.consumer.stop(5)
            self.started = False

    def send(self, body: str | dict[str, Any]) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.clients.sqs.send_message(QueueUrl=self.queue_url, MessageBody=text)

    def depth(self, url: str | None = None) -> tuple[int, int]:
        attrs = self.clients.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def drained(self) -> bool:
        return self.depth() == (0, 0) and self.consumer.is_idle()

    def run_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Start the consumer (once) and poll `predicate` until true or `timeout`."""
        self.start()
        wait_until(predicate, timeout)

    def journal(self) -> list[VersionRecord]:
        return list(self.service.journal.read_all())


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(every)


@contextlib.contextmanager
def local_pipeline(config: Config, volume: Volume) -> Iterator[Pipeline]:
    """moto in-process, resources bootstrapped, clients built with the agent's retry settings."""
    with mock_aws():
        clients, agent_clients = _clients(config), _clients(config)
        Bootstrap(config, clients).run(create_buckets=True)
        clients.sqs.purge_queue(QueueUrl=config.queue.url)  # the s3:TestEvent
        dlq_url = clients.sqs.get_queue_url(QueueName=config.queue.dead_letter_name)["QueueUrl"]
        ledger = Ledger(clients.dynamodb, config.state.table)
        marker = volume.read_marker()
        service = BackupService(
            s3=agent_clients.s3,
            volume=volume,
            journal=Journal(volume.journal_dir),
            ledger=Ledger(agent_clients.dynamodb, config.state.table),
            volume_id=marker.volume_id,
            buckets=frozenset(config.buckets),
            compression=compression_settings(config),
        )
        gave_up: list[str] = []
        consumer = Consumer(
            agent_clients.sqs,
            service.process,
            consumer_settings(config),
            on_gave_up=lambda message_id, _reasons: gave_up.append(message_id),
        )
        pipeline = Pipeline(
            config, clients, agent_clients, volume, service, consumer, ledger, dlq_url, gave_up
        )
        try:
            yield pipeline
        finally:
            pipeline.stop()


def _clients(config: Config) -> Clients:
    session = boto3.session.Session(region_name=REGION)
    settings = client_config(config)
    return Clients(
        s3=session.client("s3", config=settings),
        sqs=session.client("sqs", config=settings),
        dynamodb=session.client("dynamodb", config=settings),
        session=session,
    )


# -- hand-crafted S3 events (real S3 carries versionId and sequencer; moto does not) ----------


def s3_record(
    bucket: str,
    key: str,
    *,
    name: str = "ObjectCreated:Put",
    size: Any = None,
    etag: Any = None,
    version_id: Any = None,
    sequencer: Any = None,
    event_time: Any = None,
    encode_key: bool = True,
) -> dict[str, Any]:
    """One record shaped like the AWS documentation's example (keys form-encoded)."""
    from urllib.parse import quote_plus

    obj: dict[str, Any] = {"key": quote_plus(key, safe="/") if encode_key else key}
    for name_, value in (
        ("size", size),
        ("eTag", etag),
        ("versionId", version_id),
        ("sequencer", sequencer),
    ):
        if value is not None:
            obj[name_] = value
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": event_time or datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }


def notification(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


# -- fault injection through botocore event hooks ------------------------------------------

THROTTLE = "throttle"
SERVER_ERROR = "500"
UNAVAILABLE = "503"
TIMEOUT = "timeout"
RESET = "reset"
TRUNCATE = "truncate"  # S3 GetObject: headers arrive, the body stops half-way
LOST_RESPONSE = "lost_response"  # the service did the work; the client sees a dropped connection

_JSON_ERRORS = {
    ("dynamodb", THROTTLE): (
        400,
        "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    ),
    ("dynamodb", SERVER_ERROR): (500, "com.amazonaws.dynamodb.v20120810#InternalServerError"),
    ("dynamodb", UNAVAILABLE): (503, "com.amazonaws.dynamodb.v20120810#ServiceUnavailable"),
    ("sqs", THROTTLE): (400, "com.amazonaws.sqs#ThrottlingException"),
    ("sqs", SERVER_ERROR): (500, "com.amazonaws.sqs#InternalError"),
    ("sqs", UNAVAILABLE): (503, "com.amazonaws.sqs#ServiceUnavailable"),
}
_QUERY_ERRORS = {  # SNS, SES (and CloudWatch's error shape): XML ErrorResponse
    THROTTLE: (400, "Throttling"),
    SERVER_ERROR: (500, "InternalFailure"),
    UNAVAILABLE: (503, "ServiceUnavailable"),
}
_S3_ERRORS = {
    THROTTLE: (503, "SlowDown"),
    SERVER_ERROR: (500, "InternalError"),
    UNAVAILABLE: (503, "ServiceUnavailable"),
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        yield self._body


class Faults:
    """Scripted or random AWS faults on in-process clients.

    `script("s3.GetObject", TIMEOUT, TIMEOUT)` fails the next two GetObject *attempts*
    (botocore retries count); `randomly("dynamodb.PutItem", 0.3, [THROTTLE], rng)` fails
    about 30 % of attempts. `injected` counts what was injected, `calls` every attempt.
    """

    def __init__(self) -> None:
        self._scripts: dict[str, list[str]] = {}
        self._random: dict[str, tuple[float, list[str], Any]] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def attach(self, *clients: Any) -> Faults:
        for client in clients:
            client.meta.events.register_first("before-send", self._before_send)
            client.meta.events.register_first("after-call", self._after_call)
        return self

    def script(self, operation: str, *faults: str) -> None:
        with self._lock:
            self._scripts.setdefault(operation, []).extend(faults)

    def randomly(self, operation: str, rate: float, kinds: list[str], rng: Any) -> None:
        with self._lock:
            self._random[operation] = (rate, kinds, rng)

    def clear(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._random.clear()

    def _next(self, operation: str, phase: str) -> str | None:
        with self._lock:
            if phase == "send":
                self.calls[operation] += 1
            pending = self._scripts.get(operation)
            if pending and _phase_of(pending[0]) == phase:
                fault = pending.pop(0)
                self.injected[f"{operation}:{fault}"] += 1
                return fault
            if phase == "send" and operation in self._random:
                rate, kinds, rng = self._random[operation]
                if rng.random() < rate:
                    fault = str(rng.choice(kinds))
                    self.injected[f"{operation}:{fault}"] += 1
                    return fault
        return None

    def _before_send(self, request: Any, event_name: str, **_kwargs: Any) -> AWSResponse | None:
        service, operation = _service_operation(event_name)
        fault = self._next(f"{service}.{operation}", "send")
        if fault is None:
            return None
        if fault == TIMEOUT:
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=request.url)
        if fault == RESET:
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=request.url)
        url = request.url
        # botocore calls every before-send handler and takes the first response: point the
        # request nowhere so moto's handler (after this one) does not do the work as well.
        request.url = "http://fault-injected.invalid/"
        return _error_response(service, fault, url)

    def _after_call(self, event_name: str, parsed: dict[str, Any], **_kwargs: Any) -> None:
        service, operation = _service_operation(event_name)
        fault = self._next(f"{service}.{operation}", "after")
        if fault == LOST_RESPONSE:
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=f"{service}:{operation}")
        if fault == TRUNCATE and "Body" in parsed:
            data = parsed["Body"].read()
            length = len(data)
            parsed["Body"] = StreamingBody(io.BytesIO(data[: length // 2]), length)


def _phase_of(fault: str) -> str:
    return "after" if fault in (TRUNCATE, LOST_RESPONSE) else "send"


def _service_operation(event_name: str) -> tuple[str, str]:
    parts = event_name.split(".")
    return parts[1], parts[2]


def _error_response(service: str, fault: str, url: str) -> AWSResponse:
    if service == "s3":
        status, code = _S3_ERRORS[fault]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>injected {fault}</Message></Error>"
        ).encode()
        return AWSResponse(url, status, {"Content-Type": "application/xml"}, _Raw(body))
    if (service, fault) not in _JSON_ERRORS:
        status, code = _QUERY_ERRORS[fault]
        body = (
            "<ErrorResponse><Error><Type>Sender</Type>"
            f"<Code>{code}</Code><Message>injected {fault}</Message></Error></ErrorResponse>"
        ).encode()
        return AWSResponse(url, status, {"Content-Type": "text/xml"}, _Raw(body))
    status, kind = _JSON_ERRORS[(service, fault)]
    body = json.dumps({"__type": kind, "message": f"injected {fault}"}).encode()
    return AWSResponse(url, status, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body))


def pipeline_config(root: Any, **sections: dict[str, Any]) -> Config:
    """Fast settings for in-process runs: short polls and retry delays, few botocore attempts."""
    from tests.support.aws import QUEUE_URL, make_config

    raw: dict[str, dict[str, Any]] = {
        "aws": {"region": REGION, "max_attempts": 3, "retry_mode": "standard"},
        "queue": {
            "url": QUEUE_URL,
            "wait_time_seconds": 0,
            "visibility_timeout": 10,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 1,
            "max_receive_count": 50,
        },
        "consumer": {"workers": 4, "drain_timeout": 5},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return make_config(root, **raw)


def assert_backed_up_once(
    ledger: Ledger, volume: Volume, bucket: str, expected: dict[str, bytes]
) -> None:
    """Every key has exactly one version, LATEST points at it, and its copy verifies."""
    import hashlib

    for key, body in expected.items():
        sha = hashlib.sha256(body).hexdigest()
        versions = ledger.versions(bucket, key)
        assert [v.sha256 for v in versions] == [sha], (key, versions)
        latest = ledger.latest(bucket, key)
        assert latest is not None and latest.sha256 == sha, key
        volume.verify_copy(sha, len(body))
    stored = sorted(p.name for p in volume.objects_dir.rglob("*.zst"))
    assert stored == sorted({hashlib.sha256(b).hexdigest() + ".zst" for b in expected.values()})
    assert list(volume.tmp_dir.iterdir()) == []
