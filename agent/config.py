"""config.yaml: typed, validated, frozen. Parse at the edge, trust inside.

`load_config(path)` returns a `Config` or raises `ConfigError` whose `problems` name
each key and what is wrong with it (``queue.url: field required``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/backup-agent/config.yaml")
CONFIG_ENV_VAR = "BACKUP_AGENT_CONFIG"


class Section(BaseModel):
    """Base for every section: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AwsConfig(Section):
    region: str = "us-east-1"
    endpoint_url: str | None = None
    expected_bucket_owner: str | None = Field(
        default=None, description="Account id passed as ExpectedBucketOwner on every S3 read."
    )
    max_attempts: int = Field(default=8, ge=1, le=20)
    retry_mode: Literal["standard", "adaptive"] = "adaptive"


class QueueConfig(Section):
    url: str
    dead_letter_url: str | None = None
    wait_time_seconds: int = Field(default=20, ge=0, le=20)
    visibility_timeout: int = Field(default=300, ge=10, le=43200)
    max_messages: int = Field(default=10, ge=1, le=10)
    max_receive_count: int = Field(default=10, ge=3, le=1000)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=900.0, gt=0, le=43200)

    @field_validator("url", "dead_letter_url")
    @classmethod
    def _is_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not a queue URL (https://sqs.REGION.amazonaws.com/…)")
        return value


class StorageConfig(Section):
    root: Path
    compression_level: int = Field(default=3, ge=1, le=22)
    compression_threads: int = Field(
        default=0, ge=0, le=64, description="zstd worker threads per object; 0 = one per CPU."
    )
    chunk_bytes: int = Field(default=1 << 20, ge=64 << 10, le=64 << 20)
    min_free_bytes: int = Field(default=256 << 20, ge=0)
    volume_id: str | None = Field(
        default=None,
        description="EBS volume id of the backup root; default: discovered from the mount.",
    )

    @field_validator("volume_id")
    @classmethod
    def _ebs_volume_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"vol-[0-9a-f]{8,17}", value):
            raise ValueError(f"{value!r} is not an EBS volume id (vol-0123456789abcdef0)")
        return value

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{value} is not an absolute path")
        return value


class StateConfig(Section):
    table: str = Field(min_length=3, max_length=255)


class ConsumerConfig(Section):
    workers: int = Field(default=4, ge=1, le=256)
    max_bytes_in_flight: int = Field(default=2 << 30, ge=1 << 20)
    drain_timeout: float = Field(default=60.0, ge=0)


class SnapshotRetention(Section):
    last: int = Field(default=7, ge=1, le=1000)
    daily: int = Field(default=7, ge=0, le=3650)
    weekly: int = Field(default=4, ge=0, le=520)


class SnapshotsConfig(Section):
    """EBS snapshots of the backup volume (see agent/snapshots.py)."""

    enabled: bool = False
    schedule: str = Field(default="0 3 * * *", description="cron (UTC) or an interval: 6h, 1d")
    retain: SnapshotRetention = SnapshotRetention()
    tags: dict[str, str] = Field(default_factory=dict)
    copy_to_region: str | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        from agent.snapshot_schedule import parse_schedule

        parse_schedule(value)  # raises ValueError naming the problem
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.lower().startswith(("aws:", "backup-agent:")):
                raise ValueError(f"tag {key!r}: the aws: and backup-agent: prefixes are reserved")
        return value

    @field_validator("copy_to_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", value):
            raise ValueError(f"{value!r} is not a region name (eu-west-1)")
        return value


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class Config(Section):
    aws: AwsConfig = AwsConfig()
    queue: QueueConfig
    buckets: list[str] = Field(min_length=1)
    storage: StorageConfig
    state: StateConfig
    consumer: ConsumerConfig = ConsumerConfig()
    logging: LoggingConfig = LoggingConfig()
    snapshots: SnapshotsConfig = SnapshotsConfig()

    @field_validator("buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not (3 <= len(name) <= 63) or "/" in name:
                raise ValueError(f"{name!r} is not a bucket name")
        return value


def resolve_config_path(cli_value: str | os.PathLike[str] | None) -> Path:
    """`--config` wins, then $BACKUP_AGENT_CONFIG, then /etc/backup-agent/config.yaml."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(CONFIG_ENV_VAR)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate `path`; raise ConfigError listing every problem."""
    raw = _read_yaml(Path(path))
    return parse_config(raw)


def parse_config(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(
            ["(top level): expected a mapping of sections, got " + type(raw).__name__]
        )
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None


def environment_problems(config: Config) -> list[str]:
    """Checks that need the machine, not just the file (used by check-config)."""
    problems = []
    root = config.storage.root
    if not root.is_dir():
        problems.append(f"storage.root: {root} is not a directory")
    return problems


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{location}: field required"
    if kind == "extra_forbidden":
        return f"{location}: unknown key"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{location}: {message[:1].lower()}{message[1:]}"
