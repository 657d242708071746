"""End-to-end fixtures: a moto_server on loopback and the real `backup-agent run` process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.aws import Clients, build_clients
from agent.config import Config, load_config
from agent.operations.bootstrap import Bootstrap
from agent.storage.volume import Volume
from tests.support.aws import BUCKET, TABLE
from tests.support.local_aws import AgentProcess, MotoServer

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    """A moto_server, a config file pointing at it, bootstrapped resources and a volume."""

    server: MotoServer
    workdir: Path
    config_path: Path
    config: Config
    clients: Clients
    agents: list[AgentProcess] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.config.storage.root

    def start_agent(self, env: dict[str, str] | None = None) -> AgentProcess:
        log_path = self.workdir / f"agent-{len(self.agents)}.log"
        agent = AgentProcess(self.config_path, log_path, env=env).start()
        self.agents.append(agent)
        return agent

    def queue_depth(self, url: str | None = None) -> tuple[int, int]:
        attrs = self.clients.sqs.get_queue_attributes(
            QueueUrl=url or self.config.queue.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )


def write_stack_config(workdir: Path, endpoint: str, **sections: Any) -> Path:
    root = workdir / "volume"
    root.mkdir(exist_ok=True)
    raw: dict[str, Any] = {
        "aws": {"region": "us-east-1", "endpoint_url": endpoint, "max_attempts": 3},
        "queue": {
            "url": f"{endpoint}/123456789012/backup-events",
            "wait_time_seconds": 1,
            "visibility_timeout": 30,
            "retry_base_seconds": 1,
            "retry_max_seconds": 5,
        },
        "buckets": [BUCKET],
        "storage": {"root": str(root), "min_free_bytes": 0, "compression_threads": 1},
        "state": {"table": TABLE},
        "consumer": {"workers": 2, "drain_timeout": 20},
        "logging": {"format": "json", "level": "INFO"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **value}
        else:
            raw[name] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def make_stack(
    workdir: Path, server: MotoServer, *, init_volume: bool = True, **sections: Any
) -> Stack:
    config_path = write_stack_config(workdir, server.endpoint, **sections)
    config = load_config(config_path)
    clients = build_clients(config)
    Bootstrap(config, clients).run(create_buckets=True)
    clients.sqs.purge_queue(QueueUrl=config.queue.url)  # the s3:TestEvent
    if init_volume:
        Volume(config.storage.root).initialise("vol-e2e")
    return Stack(server, workdir, config_path, config, clients)


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    with MotoServer(log_path=tmp_path / "moto.log") as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, moto_server: MotoServer) -> Iterator[Stack]:
    built = make_stack(tmp_path, moto_server)
    yield built
    for agent in built.agents:
        agent.stop(timeout=30)
