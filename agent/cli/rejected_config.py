"""`backup-agent` cannot start because its configuration is invalid: alert, best effort.

Only the CLI calls this, before there is a valid config, a daemon or its clients: the
`alerts:` and `aws:` sections are salvaged from the raw YAML and a one-off dispatcher
sends the `config_rejected` alert. A running agent's rejected edits go through its own
dispatcher instead (agent/runtime/reload.py → Monitoring.config_rejected).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import botocore.config
import structlog

from agent.aws import Clients, region_clients
from agent.config import AlertsConfig, AwsConfig, read_yaml
from agent.monitoring.alerts import config_rejected
from agent.monitoring.channels import build_channels
from agent.monitoring.dispatcher import AlertDispatcher

log = structlog.get_logger("agent.alerts")

REJECTED_REPEAT_SECONDS = 3600.0


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
    if not alerts_config.sns_topic_arn and alerts_config.email is None:
        return False
    state = (state_dir or _state_dir()) / "backup-agent-config-rejected.json"
    digest = hashlib.sha256(json.dumps([str(path), *problems]).encode()).hexdigest()
    if _recently_sent(state, digest, clock()):
        log.info("alert.config_rejected_repeat_suppressed", path=str(path))
        return False
    made = clients or _standalone_clients(aws_config)
    dispatcher = AlertDispatcher(build_channels(alerts_config, made), context=_host_context())
    dispatcher.submit(config_rejected(str(path), problems))
    dispatcher.stop()
    if not dispatcher.sent:
        return False
    try:
        state.write_text(json.dumps({"digest": digest, "at": clock()}), encoding="utf-8")
    except OSError as exc:
        log.debug("alert.state_unwritable", path=str(state), error=str(exc))
    return True


def _state_dir() -> Path:
    return Path(os.environ.get("STATE_DIRECTORY") or tempfile.gettempdir())


def _recently_sent(state: Path, digest: str, now: float) -> bool:
    try:
        previous = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(
        previous.get("digest") == digest
        and now - float(previous.get("at", 0)) < REJECTED_REPEAT_SECONDS
    )


def _standalone_clients(aws_config: AwsConfig) -> Clients:
    """Clients with short timeouts and few retries: a start-up failure must not hang."""
    settings = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10
    )
    return region_clients(aws_config.region, aws_config.endpoint_url, settings)


def _host_context() -> dict[str, str]:
    import socket

    return {"host": socket.gethostname()}
