"""The benchmark's AWS endpoint, resources, agent configs and processes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import yaml

from agent.aws import Clients, build_clients
from agent.config import Config, load_config
from agent.operations.bootstrap import Bootstrap
from agent.storage.ledger import table_definition
from agent.storage.volume import Volume
from bench import profile
from tests.support.local_aws import FAKE_CREDENTIALS, AgentProcess, MotoServer

ACCOUNT = "123456789012"


class Endpoint:
    """`BENCH_ENDPOINT` when set, else a fresh moto_server on 127.0.0.1."""

    def __init__(self, workdir: Path, url: str | None = None) -> None:
        self.server = None if url else MotoServer(log_path=workdir / "moto.log")
        self.url = url or self.server.endpoint  # type: ignore[union-attr]
        self.description = url or "moto_server on 127.0.0.1 (started by the benchmark)"

    def __enter__(self) -> Endpoint:
        for name, value in FAKE_CREDENTIALS.items():
            os.environ.setdefault(name, value)
        if self.server:
            self.server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.server:
            self.server.stop()

    def requests(self) -> int | None:
        """Requests served so far (moto_server logs one line each); None for other endpoints."""
        if not self.server or not self.server.log_path or not self.server.log_path.exists():
            return None
        with self.server.log_path.open("rb") as handle:
            return sum(
                chunk.count(b' HTTP/1.1" ') for chunk in iter(lambda: handle.read(1 << 20), b"")
            )

    @property
    def pid(self) -> int | None:
        process = self.server._process if self.server else None
        return process.pid if process else None


@dataclass
class Setup:
    """One scenario's config file, clients, queue and volume (own table, queue and bucket)."""

    name: str
    config_path: Path
    config: Config
    clients: Clients
    workdir: Path
    agents: list[AgentRun] = field(default_factory=list)

    @property
    def queue_url(self) -> str:
        return self.config.queue.url

    @property
    def volume(self) -> Volume:
        return Volume(self.config.storage.root)

    def start_agent(self) -> AgentRun:
        # A stopped agent's last long poll lives on in the endpoint and would take (and
        # hide for the visibility timeout) a message sent before it ends: wait it out.
        stopped = max((run.stopped_at for run in self.agents), default=0.0)
        time.sleep(max(0.0, stopped + self.config.queue.wait_time_seconds + 0.5 - time.monotonic()))
        # The log is kept out of config.yaml's directory: the agent watches that directory
        # for config edits (agent/runtime/reload.py), so each log line there was an inotify
        # event its watcher threads handled, ~0.5 ms of the agent's CPU per line here (one
        # line per object: "backup.stored"). A deployed agent logs to journald.
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        run = AgentRun(AgentProcess(self.config_path, logs / f"agent-{len(self.agents)}.log"))
        self.agents.append(run)
        run.start()
        return run

    def queue_depth(self) -> int:
        attrs = self.clients.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    def purge(self) -> None:
        self.clients.sqs.purge_queue(QueueUrl=self.queue_url)

    def stop_agents(self) -> None:
        for run in self.agents:
            run.stop()


def make_setup(
    root: Path,
    endpoint: str,
    name: str,
    *,
    bucket: str,
    notify: bool,
    workers: int = 4,
    compression_threads: int = 0,
    wait_time_seconds: int = 20,
    receive_ahead: bool | None = None,
) -> Setup:
    """Write a config for scenario `name`, create its resources and initialise its volume."""
    workdir = root / name
    volume_root = workdir / "volume"
    volume_root.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {
        "aws": {"region": "us-east-1", "endpoint_url": endpoint, "max_attempts": 5},
        "queue": {
            "url": f"{endpoint}/{ACCOUNT}/bench-{name}",
            "wait_time_seconds": wait_time_seconds,
            "visibility_timeout": 120,
        },
        "buckets": [bucket],
        "storage": {
            "root": str(volume_root),
            "min_free_bytes": 0,
            "compression_threads": compression_threads,
        },
        "state": {"table": f"bench-{name}"},
        "consumer": {"workers": workers, "drain_timeout": 10},
        "logging": {"format": "json", "level": "INFO"},
    }
    if receive_ahead is not None:  # else the default, as an operator runs it
        raw["consumer"]["receive_ahead"] = receive_ahead
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    config = load_config(config_path)
    clients = build_clients(config)
    bootstrap = Bootstrap(config, clients)
    bootstrap.ensure_bucket(bucket)
    if notify:
        bootstrap.run()
    else:
        bootstrap.ensure_queue(f"bench-{name}", {"VisibilityTimeout": "120"})
        bootstrap.ensure_table()
    clients.sqs.purge_queue(QueueUrl=config.queue.url)  # the s3:TestEvent
    Volume(volume_root).initialise(f"vol-bench-{name}")
    return Setup(name, config_path, config, clients, workdir)


def create_table(clients: Clients, name: str) -> None:
    clients.dynamodb.create_table(**table_definition(name))
    clients.dynamodb.get_waiter("table_exists").wait(TableName=name)


class RssSampler:
    """Peak resident memory of one process, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> int:
        try:
            rss = int(self.process.memory_info().rss)
        except psutil.Error:
            return self.peak
        self.peak = max(self.peak, rss)
        return rss

    def reset(self) -> int:
        self.peak = 0
        return self.sample()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


class LogTail:
    """Reads an agent's JSON log incrementally; counts and keeps the events asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()  # the feeder thread polls too
        self.events: dict[str, list[dict[str, Any]]] = {}

    def poll(self) -> None:
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.setdefault(str(event.get("event")), []).append(event)

    def named(self, name: str) -> list[dict[str, Any]]:
        self.poll()
        return self.events.get(name, [])

    def wait_for(
        self, name: str, count: int = 1, timeout: float = 600.0, interval: float = 0.01
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.named(name)) < count:
            failed = self.events.get("backup.failed")
            if failed:
                raise RuntimeError(f"agent reported backup.failed: {failed[0]}")
            if time.monotonic() > deadline:
                got = len(self.named(name))
                raise TimeoutError(f"{got}/{count} {name!r} events after {timeout} s")
            time.sleep(interval)
        return self.events[name]


# What the daemon's encryption-check thread logs last (agent/storage/encryption.py,
# agent/runtime/daemon.py)
STARTUP_CHECK_ENDS = (
    "volume.encryption_not_checked",
    "volume.encryption_unknown",
    "volume.encrypted",
    "volume.unencrypted",
    "volume.encryption_check_failed",
)


class AgentRun:
    """A real `backup-agent run` process with its log tail and memory sampler."""

    def __init__(self, process: AgentProcess) -> None:
        self.process = process
        self.log = LogTail(process.log_path)
        self.rss: RssSampler | None = None
        self.stopped_at = 0.0
        self.profiler: profile.Profiler | None = None

    def start(self) -> None:
        self.process.start()
        self.rss = RssSampler(self.process.pid).start()
        self.log.wait_for("agent.started", timeout=60)
        if profile.enabled():
            output = self.process.log_path.with_name(f"profile-{self.process.log_path.stem}.txt")
            self.profiler = profile.Profiler(self.process.pid, output)

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Until the start-up check of the volume's encryption has ended (it runs beside the
        consumer: an EC2 client, ~0.13 CPU-s here, that would otherwise count in the first
        objects' CPU); at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.poll()
            if any(name in self.log.events for name in STARTUP_CHECK_ENDS):
                return
            time.sleep(0.01)
        print(  # measured all the same, but the reader must know
            f"  warning: the agent's start-up check did not end within {timeout:.0f} s;"
            " this run's figures include it",
            file=sys.stderr,
        )

    def stop(self) -> None:
        if self.rss:
            self.rss.stop()
        if self.profiler:
            self.profiler.stop()
            print(f"  profile of the agent ({self.profiler.output}), share of samples:")
            for share, frame in profile.top_frames(self.profiler.output):
                print(f"    {share:6.1%}  {frame}")
        self.process.stop(timeout=30)
        self.stopped_at = time.monotonic()
