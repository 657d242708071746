"""The error tree. Each class says what an operator (or the consumer) can do about it."""

from __future__ import annotations


class BackupAgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(BackupAgentError):
    """The configuration is missing, unreadable or invalid; `problems` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class VolumeNotReady(BackupAgentError):
    """The backup root is missing, unmounted or lacks the volume marker."""


class VolumeNotInitialised(VolumeNotReady):
    """The backup root is a mounted file system without the marker: `init-volume` was
    skipped. Waiting cannot fix it, so `run` stops at once (exit 3) instead of waiting."""


class RetryableError(BackupAgentError):
    """A transient failure (throttling, 5xx, full disk): release the message and try later."""


class DiskFull(RetryableError):
    """The backup volume has no room left (ENOSPC)."""


class PermanentError(BackupAgentError):
    """A failure that retrying soon will not fix (AccessDenied): leave it for the DLQ redrive."""


class MalformedMessage(PermanentError):
    """An SQS message body that is not an S3 event in any shape the agent knows."""


class ObjectGone(BackupAgentError):
    """The object or version named by an event no longer exists (deleted or replaced)."""


class IntegrityError(BackupAgentError):
    """Bytes did not match their recorded size, eTag or SHA-256."""


class ObjectUnreadable(BackupAgentError):
    """S3 holds the version but will not serve its bytes to the agent: archived (GLACIER,
    DEEP_ARCHIVE, an Intelligent-Tiering archive tier) or encrypted with a customer-provided
    key (SSE-C). A state to record, not a failure to retry."""

    def __init__(self, reason: str, storage_class: str | None, message: str) -> None:
        self.reason = reason
        self.storage_class = storage_class
        super().__init__(message)
