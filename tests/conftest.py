"""Shared fixtures: fake credentials, in-process moto (`mock_aws`), a ready config and volume."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.aws import Clients
from agent.config import Config
from agent.pipeline.commit import Committer
from agent.pipeline.consumer import Consumer
from agent.storage.volume import Volume
from tests.support import moto_server
from tests.support.aws import REGION, bootstrapped_aws, make_config

# moto's TransactWriteItems copies whole tables, racing other threads' writes: the local AWS
# stand-in's change (tests/support/moto_server.py, compared with moto's in test_moto_server)
moto_server.install()

# Tests that fork: agent/restore/workers.py forks only from a single-threaded process, and a
# test session is not one once earlier tests have left threads behind (servers, pools; the
# first CI run of 2026-12-01 13:01 failed five such tests).
# tests/unit/test_restore_processes_alone.py runs these files in an interpreter of their own
# (ALONE set); named on the command line, they run here as well.
ALONE = "BACKUP_AGENT_TESTS_ALONE"
SINGLE_THREADED = frozenset({"test_restore_processes.py"})


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name not in SINGLE_THREADED or os.environ.get(ALONE):
        return None
    named = {Path(arg.split("::")[0]).name for arg in config.args}
    return None if collection_path.name in named else True


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


@pytest.fixture(autouse=True, scope="session")
def _own_state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A command's own state (agent/cli/state_dir.py: a fleet restore's lock, the rejected
    config's dedup) goes to the session's temporary directory, never the user's home; for
    the session, so module fixtures that run commands (test_iam_policy's world) see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("STATE_DIRECTORY", raising=False)
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-state"))
        yield


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


@pytest.fixture
def committers() -> Iterator[list[Committer]]:
    """Committers a test made (append them): closed, their threads ended, after the test's
    consumers stopped (as the daemon does). One left open keeps its thread waiting for the
    rest of the process, and a later test of the restore's worker processes, which fork
    only from a lone thread (agent/restore/workers.py `usable`), ran with threads instead."""
    made: list[Committer] = []
    yield made
    for committer in made:
        committer.close(5)


@pytest.fixture
def consumers(committers: list[Committer]) -> Iterator[list[Consumer]]:
    """Consumers a test started (append them): stopped, and their threads ended, before
    moto goes away (and before the test's `committers` close)."""
    made: list[Consumer] = []
    yield made
    for consumer in made:
        consumer.stop(5)
        for thread in consumer._threads:
            thread.join(10)


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
