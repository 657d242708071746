"""Scenario 2: many small objects, from queued event to durable-and-recorded.

Objects are uploaded once (bucket without notifications); each run then feeds S3 event
messages in moto's own format to a fresh queue, table and volume, keeping at most
`depth` messages outstanding (queued or in flight), because moto's SQS slows down as a
queue grows. The same feed drives the agent and the endpoint's ceiling loop.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote_plus, unquote_plus

import botocore.exceptions
import psutil

from agent.aws import Clients
from bench.data import small_payload
from bench.stack import Setup

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef

BUCKET = "bench-small"
N = TypeVar("N", int, float)


@dataclass(frozen=True)
class SmallObject:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Run:
    workers: int
    count: int
    seconds: float
    mean_outstanding: float
    agent_cpu: float | None = None  # the agent process's CPU seconds during the run

    @property
    def rate(self) -> float:
        return self.count / self.seconds


class CpuMeter:
    """CPU seconds of processes (and this one: the feeder, the ceiling loop) over a run."""

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid else None
        self._start = self._now()

    def _now(self) -> tuple[float, float]:
        times = self.process.cpu_times() if self.process else None
        other = float(times.user + times.system) if times else 0.0
        return other, time.process_time()

    def used(self) -> tuple[float, float]:
        """(the process's, this process's) CPU seconds since the meter was made."""
        other, here = self._now()
        return other - self._start[0], here - self._start[1]


@dataclass
class Totals:
    """One kind of run (the agent, the agent without receive_ahead, the loop) summed over the
    rounds of one worker count, and each round's rate."""

    count: int = 0
    seconds: float = 0.0
    outstanding: float = 0.0  # objects x mean outstanding, for the mean
    own_cpu: float | None = 0.0  # the agent's (or this process's, for the loop) CPU seconds
    endpoint_cpu: float | None = 0.0
    bench_cpu: float = 0.0  # this process's (the feeder's) during agent runs
    requests: int | None = 0
    rates: list[float] = field(default_factory=list)

    def add(
        self,
        run: Run,
        own_cpu: float | None,
        endpoint_cpu: float | None,
        bench_cpu: float,
        requests: int | None,
    ) -> None:
        self.count += run.count
        self.seconds += run.seconds
        self.outstanding += run.count * run.mean_outstanding
        self.own_cpu = _plus(self.own_cpu, own_cpu)
        self.endpoint_cpu = _plus(self.endpoint_cpu, endpoint_cpu)
        self.bench_cpu += bench_cpu
        self.requests = _plus(self.requests, requests)
        self.rates.append(run.rate)

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def mean_outstanding(self) -> float:
        return self.outstanding / self.count

    def per_object(self) -> str:
        return "?" if self.requests is None else f"{self.requests / self.count:.2f}"


def _plus(total: N | None, more: N | None) -> N | None:
    """A sum that stays unknown (None) once a part is."""
    return None if total is None or more is None else total + more


@dataclass(frozen=True)
class Spread:
    """The median of per-round ratios, and the lowest and highest."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, ratios: Sequence[float]) -> Spread:
        return cls(statistics.median(ratios), min(ratios), max(ratios))

    def __str__(self) -> str:
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f})"


def round_ratios(agent: Sequence[float], loop: Sequence[float]) -> list[float]:
    """Agent / loop rate of each round."""
    return [a / b for a, b in zip(agent, loop, strict=True)]


def round_order(index: int, kinds: Sequence[str]) -> list[str]:
    """The runs of round `index`: as given in even rounds, reversed in odd ones (agent,
    loop / loop, agent / ...), so that a load that grows or shrinks over the section, on a
    machine shared with others, weighs on both sides alike."""
    return list(kinds) if index % 2 == 0 else list(reversed(kinds))


def round_slices(objects: Sequence[SmallObject], rounds: int) -> list[list[SmallObject]]:
    """The objects of each round: every `rounds`-th, so the rounds are alike in size."""
    return [list(objects[start::rounds]) for start in range(rounds)]


def cpu_per_object(seconds: float | None, count: int) -> str:
    """CPU milliseconds per object, or "?" when not measured."""
    return "?" if seconds is None else f"{1000 * seconds / count:.1f}"


def upload_objects(clients: Clients, count: int, size: int, threads: int = 4) -> list[SmallObject]:
    def put(index: int) -> SmallObject:
        key = f"small/{index:05d}.json"
        response = clients.s3.put_object(Bucket=BUCKET, Key=key, Body=small_payload(index, size))
        return SmallObject(key, size, response["ETag"].strip('"'))

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(put, range(count)))


class Uploaded(Protocol):
    """What an event names of an uploaded object (SmallObject, bench.fleet's FleetObject)."""

    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...


def event_body(obj: Uploaded, when: datetime | None = None, bucket: str = BUCKET) -> str:
    """An `ObjectCreated:Put` notification of `bucket` exactly as moto_server sends it."""
    when = when or datetime.now(UTC)
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "backup-agent",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(obj.key), "size": obj.size, "eTag": obj.etag},
        },
    }
    return json.dumps({"Records": [record]})


class Feeder:
    """Sends the events in batches of 10, keeping at most `depth` outstanding."""

    def __init__(
        self,
        clients: Clients,
        queue_url: str,
        bodies: list[str],
        depth: int,
        done: Callable[[], int],
    ) -> None:
        self.clients = clients
        self.queue_url = queue_url
        self.bodies = bodies
        self.depth = depth
        self.done = done
        self.sent = 0
        self._outstanding: list[int] = []
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    @property
    def mean_outstanding(self) -> float:
        return sum(self._outstanding) / len(self._outstanding) if self._outstanding else 0.0

    def _run(self) -> None:
        while self.sent < len(self.bodies):
            outstanding = self.sent - self.done()
            self._outstanding.append(outstanding)
            room = min(self.depth - outstanding, len(self.bodies) - self.sent)
            if room < min(10, len(self.bodies) - self.sent):
                time.sleep(0.005)
                continue
            batch = self.bodies[self.sent : self.sent + min(10, room)]
            self.clients.sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)],
            )
            self.sent += len(batch)


def agent_run(
    setup: Setup, objects: list[SmallObject], depth: int
) -> tuple[Run, list[dict[str, Any]]]:
    """The real agent with `setup`'s worker count; returns the run and its stored events."""
    workers = setup.config.consumer.workers
    run = setup.start_agent()
    agent_cpu: float | None = None
    try:
        run.wait_settled()  # the rate and CPU of the steady state, not of the start-up checks
        bodies = [event_body(obj) for obj in objects]
        count = len(bodies)
        meter = CpuMeter(run.process.pid)
        started = time.perf_counter()
        feeder = Feeder(
            setup.clients,
            setup.queue_url,
            bodies,
            depth,
            lambda: len(run.log.named("backup.stored")),
        ).start()
        stored = run.log.wait_for("backup.stored", count, timeout=1200)
        seconds = time.perf_counter() - started
        agent_cpu = meter.used()[0]
        feeder.join()
        wait_until_empty(setup)
    finally:
        run.stop()
    return Run(workers, count, seconds, feeder.mean_outstanding, agent_cpu), stored


def wait_until_empty(setup: Setup, timeout: float = 30.0) -> None:
    """Every message deleted (not merely processed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attrs = setup.clients.sqs.get_queue_attributes(
            QueueUrl=setup.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if attrs == {
            "ApproximateNumberOfMessages": "0",
            "ApproximateNumberOfMessagesNotVisible": "0",
        }:
            return
        time.sleep(0.05)
    raise RuntimeError(f"queue of {setup.name} still holds messages after {timeout} s")


def ceiling_run(setup: Setup, objects: list[SmallObject], depth: int) -> Run:
    """The endpoint's ceiling: only the calls one object needs, at the same concurrency.

    Per worker: receive up to 10, then per message one GET (read fully) and one conditional
    PutItem, then one DeleteMessageBatch.
    """
    workers = setup.config.consumer.workers
    clients = setup.clients
    table = setup.config.state.table
    count = len(objects)
    done = 0
    finished = 0.0
    lock = threading.Lock()

    def work() -> None:
        nonlocal done, finished
        while True:
            with lock:
                if done >= count:
                    return
            messages = clients.sqs.receive_message(
                QueueUrl=setup.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            for message in messages:
                _ceiling_one(clients, table, message)
                with lock:
                    done += 1
                    if done == count:
                        finished = time.perf_counter()
            if messages:
                clients.sqs.delete_message_batch(
                    QueueUrl=setup.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(messages)
                    ],
                )

    bodies = [event_body(obj) for obj in objects]
    started = time.perf_counter()
    feeder = Feeder(clients, setup.queue_url, bodies, depth, lambda: done).start()
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(work) for _ in range(workers)]:
            future.result()
    feeder.join()
    return Run(workers, count, finished - started, feeder.mean_outstanding)


def _ceiling_one(clients: Clients, table: str, message: MessageTypeDef) -> None:
    record = json.loads(message["Body"])["Records"][0]
    key = unquote_plus(record["s3"]["object"]["key"])
    body = clients.s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    size = len(body.read())
    try:
        clients.dynamodb.put_item(
            TableName=table,
            Item={
                "pk": {"S": f"{BUCKET}/{key}"},
                "sk": {"S": "V#" + record["eventTime"]},
                "size": {"N": str(size)},
                "etag": {"S": record["s3"]["object"]["eTag"]},
            },
            ConditionExpression="attribute_not_exists(pk)",
        )
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
