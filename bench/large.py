"""Scenario 1: one large object, end to end, next to its ceiling and the scripted pipeline."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.stack import Setup
from bench.timing import MiB, run_timed

BUCKET = "bench-large"
CHUNK = 1 << 20

# The awscli splits downloads above 8 MiB into ranged GETs; moto charges each one for the whole
# object, so the scripted pipeline gets one plain GET (its best case against this endpoint).
AWSCLI_CONFIG = """[default]
region = us-east-1
s3 =
  multipart_threshold = 64GB
"""


@dataclass(frozen=True)
class AgentBackup:
    size: int
    seconds: float
    idle_rss: int
    peak_rss: int
    sha256: str


@dataclass(frozen=True)
class Scripted:
    download: float
    compress: float
    checksum: float

    @property
    def seconds(self) -> float:
        return self.download + self.compress + self.checksum


def upload(setup: Setup, path: Path, key: str) -> str:
    """Upload `path` (multipart) and return the body of its S3 event, taken off the queue."""
    setup.clients.s3.upload_file(str(path), BUCKET, key)
    bodies: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = setup.clients.sqs.receive_message(
            QueueUrl=setup.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in messages:
            bodies.append(message["Body"])
            setup.clients.sqs.delete_message(
                QueueUrl=setup.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        if any("CompleteMultipartUpload" in body for body in bodies) or (bodies and not messages):
            break
    if not bodies:
        raise RuntimeError(f"no S3 event for {key}")
    return bodies[-1]


def agent_backup(setup: Setup, event_body: str, size: int) -> AgentBackup:
    """Start a fresh agent, hand it the object's event, time it until `backup.stored`."""
    run = setup.start_agent()
    try:
        assert run.rss is not None
        idle = run.rss.reset()
        before = len(run.log.named("backup.stored"))
        started = time.perf_counter()
        setup.clients.sqs.send_message(QueueUrl=setup.queue_url, MessageBody=event_body)
        stored = run.log.wait_for("backup.stored", before + 1)[-1]
        seconds = time.perf_counter() - started
        run.rss.sample()
        if int(stored["bytes"]) != size:
            raise RuntimeError(f"agent stored {stored['bytes']} bytes, expected {size}")
        return AgentBackup(size, seconds, idle, run.rss.peak, str(stored["sha256"]))
    finally:
        run.stop()


def plain_get(setup: Setup, key: str) -> float:
    """A streaming GET of the object to nowhere, in the agent's chunk size."""
    started = time.perf_counter()
    body = setup.clients.s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    while body.read(CHUNK):
        pass
    return time.perf_counter() - started


def zstd_cli(path: Path, threads: int, level: int = 3) -> float:
    return run_timed(["zstd", f"-{level}", f"-T{threads}", "-q", "-c", str(path)])


def scripted(setup: Setup, key: str, workdir: Path) -> Scripted:
    """`aws s3 cp` to a file, `zstd -3` of it, `sha256sum` of it — each timed."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "download.log"
    aws_config = workdir / "awscli.ini"
    aws_config.write_text(AWSCLI_CONFIG, encoding="utf-8")
    env = {**os.environ, "AWS_CONFIG_FILE": str(aws_config)}
    endpoint = setup.config.aws.endpoint_url or ""
    download = run_timed(
        [
            "aws",
            "s3",
            "cp",
            "--only-show-errors",
            "--endpoint-url",
            endpoint,
            f"s3://{BUCKET}/{key}",
            str(target),
        ],
        env=env,
    )
    compress = run_timed(["zstd", "-3", "-q", "-f", str(target), "-o", f"{target}.zst"])
    checksum = run_timed(["sha256sum", str(target)])
    target.unlink()
    Path(f"{target}.zst").unlink()
    return Scripted(download, compress, checksum)


def rss_mib(value: int) -> float:
    return value / MiB
