"""A local AWS stand-in (moto_server on 127.0.0.1) for `make demo`, e2e tests and benchmarks.

Never used against real AWS: it only starts a process bound to loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def moto_server_command() -> list[str]:
    """moto_server, with tests/support/moto_server.py's change to TransactWriteItems."""
    return [sys.executable, "-m", "tests.support.moto_server"]


REPO_ROOT = Path(__file__).resolve().parents[2]  # where `tests.support` imports from


class MotoServer:
    """`with MotoServer() as aws: aws.endpoint` — a moto_server on a free loopback port."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **FAKE_CREDENTIALS, "PYTHONPATH": path}
        output = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [*moto_server_command(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout} s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def agent_command() -> list[str]:
    beside = Path(sys.executable).with_name("backup-agent")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "agent.cli.agent"]


class AgentProcess:
    """The real `backup-agent run` process, its JSON log lines collected in a file."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = log_path
        self.env = {**os.environ, **FAKE_CREDENTIALS, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*agent_command(), "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_events(self) -> list[dict[str, object]]:
        import json

        events: list[dict[str, object]] = []
        if not self.log_path.exists():
            return events
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                events.append(parsed)
        return events

    def log_events_named(self, event: str) -> list[dict[str, object]]:
        return [e for e in self.log_events() if e.get("event") == event]

    def wait_for(
        self, event: str, count: int = 1, timeout: float = 30.0
    ) -> list[dict[str, object]]:
        """Wait until `count` log lines named `event` were written; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.log_events() if e.get("event") == event]
            if len(found) >= count:
                return found
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode} before {event}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)}/{count} {event!r} log events after {timeout} s")
            time.sleep(0.1)

    def stop(self, sig: int | None = None, timeout: float = 60.0) -> int:
        import signal as signals

        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig or signals.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
