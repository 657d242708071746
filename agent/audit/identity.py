"""Who is acting: the Unix user of the process and, for AWS commands, the STS caller.

The caller identity is asked once per command (`whoami`), through the clients the command
was handed; a failure leaves it unknown rather than stopping the command.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from agent.audit.records import Actor

if TYPE_CHECKING:
    from mypy_boto3_sts import STSClient

log = structlog.get_logger("agent.audit")


def unix_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # a uid with no passwd entry (a container)


def whoami(sts: STSClient | None = None, environ: Mapping[str, str] | None = None) -> Actor:
    """The actor; `sts` None (an offline command) leaves the AWS identity unknown.

    Under sudo the real person is SUDO_USER: shown as ``root (sudo: alice)``."""
    environ = os.environ if environ is None else environ
    uid = os.getuid()
    user = unix_user(uid)
    sudo_user = environ.get("SUDO_USER")
    if sudo_user and uid == 0:
        user = f"{user} (sudo: {sudo_user})"
    arn = account = None
    if sts is not None:
        try:
            identity = sts.get_caller_identity()
            arn, account = identity.get("Arn"), identity.get("Account")
        except Exception as exc:  # noqa: BLE001 - an audit record must not stop the command
            log.warning("audit.identity_unknown", error=str(exc))
    return Actor(uid=uid, user=user, aws_arn=arn, aws_account=account)
