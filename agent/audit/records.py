"""`AuditRecord`: one thing an operator or a job did to the backups, and who did it.

The same shape on the volume (`audit/YYYY-MM-DD.jsonl`), in CloudWatch Logs and in
`backup-restore audit --json`. Read back from either place, a record is validated like any
other input: a line that does not parse is skipped, never trusted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# What happened: one name per audited action.
ACTIONS = (
    "restore",  # to a directory
    "restore-s3",  # back into S3
    "share",
    "verify",
    "retention",
    "gc",
    "scrub",
    "reindex",
    "snapshot",
    "config-reload",
    "inventory",
)
OUTCOMES = ("ok", "partial", "failed")
MAX_KEYS = 100  # keys named in one record; `keys_total` counts them all


@dataclass(frozen=True, slots=True)
class Actor:
    """Who: the Unix user running the process and, for AWS commands, the STS caller."""

    uid: int
    user: str
    aws_arn: str | None = None
    aws_account: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "user": self.user,
            "aws_arn": self.aws_arn,
            "aws_account": self.aws_account,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Actor:
        return cls(
            uid=int(data["uid"]),
            user=str(data["user"]),
            aws_arn=_optional_str(data.get("aws_arn")),
            aws_account=_optional_str(data.get("aws_account")),
        )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    who: Actor
    action: str
    outcome: str
    target: str | None = None  # a directory, s3://bucket/prefix, a table, a snapshot
    prefix: str | None = None
    keys: tuple[str, ...] = ()
    keys_total: int = 0
    versions: tuple[str, ...] = ()
    files: int = 0
    bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown audit outcome {self.outcome!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.astimezone(UTC).isoformat(),
            "who": self.who.to_dict(),
            "action": self.action,
            "outcome": self.outcome,
            "target": self.target,
            "prefix": self.prefix,
            "keys": list(self.keys),
            "keys_total": self.keys_total,
            "versions": list(self.versions),
            "files": self.files,
            "bytes": self.bytes,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRecord:
        """Raises ValueError (or KeyError/TypeError) for a document that is not a record."""
        at = datetime.fromisoformat(str(data["at"]))
        if at.tzinfo is None:
            raise ValueError("an audit time without a zone")
        details = data.get("details") or {}
        if not isinstance(details, dict):
            raise ValueError("details is not a mapping")
        return cls(
            id=str(data["id"]),
            at=at,
            who=Actor.from_dict(data["who"]),
            action=str(data["action"]),
            outcome=str(data["outcome"]),
            target=_optional_str(data.get("target")),
            prefix=_optional_str(data.get("prefix")),
            keys=tuple(str(k) for k in data.get("keys") or ()),
            keys_total=int(data.get("keys_total") or 0),
            versions=tuple(str(v) for v in data.get("versions") or ()),
            files=int(data.get("files") or 0),
            bytes=int(data.get("bytes") or 0),
            details=details,
        )


def parse_record(data: Any) -> AuditRecord | None:
    """A record, or None for anything that is not one (a torn or foreign line)."""
    if not isinstance(data, dict):
        return None
    try:
        return AuditRecord.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
