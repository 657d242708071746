"""`backup-agent` cannot start because its configuration is invalid: alert, best effort.

Only the CLI calls this, before there is a valid config, a daemon or its clients: the
`alerts:` and `aws:` sections are salvaged from the raw YAML and a one-off dispatcher
sends the `config_rejected` alert. A running agent's rejected edits go through its own
dispatcher instead (agent/runtime/reload.py → Monitoring.config_rejected).

Its dedup state (the last problems sent, and when) lives in systemd's state directory
($STATE_DIRECTORY, `StateDirectory=backup-agent`), or outside systemd in a per-user one
($XDG_STATE_HOME/backup-agent, else ~/.local/state/backup-agent, made 0700: see
agent/cli/state_dir.py); never at a fixed name in /tmp, where anyone could plant a link for
root to write through. The directory and the file are opened with O_NOFOLLOW and the file
replaced by rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import botocore.config
import structlog

from agent.aws import Clients, region_clients
from agent.cli.state_dir import open_state_dir
from agent.cli.state_dir import state_dir as default_state_dir
from agent.config import AlertsConfig, AwsConfig, read_yaml
from agent.errors import ConfigError
from agent.monitoring.alerts import config_rejected
from agent.monitoring.channels import build_channels
from agent.monitoring.dispatcher import AlertDispatcher

log = structlog.get_logger("agent.alerts")

REJECTED_REPEAT_SECONDS = 3600.0
STATE_NAME = "backup-agent-config-rejected.json"


def report_rejected_config(
    path: Path,
    problems: Sequence[str],
    *,
    clients: Clients | None = None,
    state_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Alert that the agent cannot start because its config is invalid.

    Best effort: the `alerts:` and `aws:` sections are salvaged from the raw file; if
    they are unusable nothing is sent. The same problems are reported at most once an
    hour, so a restart loop under systemd does not mail the operator every few seconds.
    """
    try:
        raw = read_yaml(path)  # strict and bounded, like the agent's own loading
        alerts_config = AlertsConfig.model_validate(raw.get("alerts") or {})
        aws_config = AwsConfig.model_validate(raw.get("aws") or {})
    except Exception as exc:  # noqa: BLE001 - nothing usable to alert with
        log.debug("alert.config_rejected_unsendable", error=str(exc))
        return False
    channels_configured = (alerts_config.sns_topic_arn, alerts_config.email, alerts_config.webhook)
    if not any(channels_configured):
        return False
    directory, private = (state_dir, False) if state_dir else default_state_dir()
    digest = hashlib.sha256(json.dumps([str(path), *problems]).encode()).hexdigest()
    try:
        dir_fd: int | None = open_state_dir(directory, private=private)
    except OSError as exc:  # the alert still goes out, without its dedup state
        log.warning("alert.state_dir_unusable", path=str(directory), error=str(exc))
        dir_fd = None
    try:
        if dir_fd is not None and _recently_sent(dir_fd, digest, clock()):
            log.info("alert.config_rejected_repeat_suppressed", path=str(path))
            return False
        made = clients or _standalone_clients(aws_config)
        try:
            channels = build_channels(alerts_config, made)
        except ConfigError as exc:  # the webhook's variable is not set: no way to say it
            log.warning("alert.config_rejected_unsendable", error=str(exc))
            return False
        dispatcher = AlertDispatcher(channels, context=_host_context())
        dispatcher.submit(config_rejected(str(path), problems))
        dispatcher.stop()
        if not dispatcher.sent:
            return False
        if dir_fd is not None:
            try:
                _write_state(dir_fd, {"digest": digest, "at": clock()})
            except OSError as exc:
                log.debug("alert.state_unwritable", path=str(directory), error=str(exc))
        return True
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _recently_sent(dir_fd: int, digest: str, now: float) -> bool:
    try:
        fd = os.open(STATE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as handle:
            previous = json.loads(handle.read(64 << 10))
        return bool(
            previous.get("digest") == digest
            and now - float(previous.get("at", 0)) < REJECTED_REPEAT_SECONDS
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _write_state(dir_fd: int, state: dict[str, object]) -> None:
    """A new file in the directory, then renamed over the state (a planted link is replaced,
    never written through)."""
    temp = f".{STATE_NAME}.{uuid.uuid4().hex}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(state).encode())
        os.replace(temp, STATE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)


def _standalone_clients(aws_config: AwsConfig) -> Clients:
    """Clients with short timeouts and few retries: a start-up failure must not hang."""
    settings = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10
    )
    return region_clients(aws_config.region, aws_config.endpoint_url, settings)


def _host_context() -> dict[str, str]:
    import socket

    return {"host": socket.gethostname()}
