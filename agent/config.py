"""config.yaml: typed, validated, frozen. Parse at the edge, trust inside.

Kept whole: one schema, section by section in the order of config.yaml; splitting it would
scatter the one place an operator's key is defined and validated.

`load_config(path)` returns a `Config` or raises `ConfigError` whose `problems` name
each key and what is wrong with it (``queue.url: field required``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import structlog
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import ConfigError
from agent.schedule import Duration, Schedule, at_least, cron, format_duration, within

log = structlog.get_logger("agent.config")

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
    kms_key_arns: list[str] = Field(
        default_factory=list,
        description="KMS keys of SSE-KMS objects; the IAM policy grants kms:Decrypt on these only.",
    )

    @field_validator("kms_key_arns")
    @classmethod
    def _key_arns(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not arn.startswith("arn:") or ":kms:" not in arn:
                raise ValueError(f"{arn!r} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/…)")
        return value


class QueueConfig(Section):
    url: str
    dead_letter_url: str | None = None
    wait_time_seconds: int = Field(default=20, ge=0, le=20)
    visibility_timeout: Annotated[
        Duration, within(timedelta(seconds=10), timedelta(hours=12), whole_seconds=True)
    ] = timedelta(seconds=300)
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

    @property
    def name(self) -> str:
        """The queue's name: the last part of its URL."""
        return queue_name(self.url)

    @property
    def dead_letter_name(self) -> str:
        """`dead_letter_url`'s name, or ``<queue>-dlq`` (what bootstrap creates)."""
        if self.dead_letter_url:
            return queue_name(self.dead_letter_url)
        return self.name + "-dlq"


def queue_name(url: str) -> str:
    return urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]


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
    record_tags: bool = Field(
        default=True,
        description="Read each version's tags (one GetObjectTagging per object) for restore.",
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
    drain_timeout: Duration = timedelta(seconds=60)
    receive_ahead: bool = False


class SnapshotRetention(Section):
    last: int = Field(default=7, ge=1, le=1000)
    daily: int = Field(default=7, ge=0, le=3650)
    weekly: int = Field(default=4, ge=0, le=520)


SNAPSHOT_MIN_INTERVAL = timedelta(minutes=5)


class SnapshotsConfig(Section):
    """EBS snapshots of the backup volume (see agent/snapshots/manager.py).

    `schedule` is the one source of the snapshot job's times and of the snapshot-age alarm's
    allowed age; `schedules.snapshots` is refused so the two cannot disagree.
    """

    enabled: bool = False
    schedule: Annotated[Schedule, at_least(SNAPSHOT_MIN_INTERVAL)] = Field(
        default=cron("0 3 * * *"), description="cron (UTC) or an interval: 6h, 1d"
    )
    retain: SnapshotRetention = SnapshotRetention()
    tags: dict[str, str] = Field(default_factory=dict)
    copy_to_region: str | None = None

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


class ReconcileConfig(Section):
    """Backfill: list the buckets and back up what the ledger lacks (lifecycle/reconcile.py)."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    objects_per_second: float = Field(default=20.0, gt=0)
    checkpoint_every: int = Field(default=100, ge=1)
    include_noncurrent: bool = True


class RetentionConfig(Section):
    """Which recorded versions to keep (lifecycle/retention.py). Unset rules keep everything."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    keep_last_versions: int | None = Field(default=None, ge=1)
    keep_younger_than: Duration | None = None
    keep_deleted_days: float | None = Field(default=None, ge=0)


class GcConfig(Section):
    """Remove copies no record references (agent/lifecycle/gc.py)."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    grace_period: Duration = timedelta(hours=24)


class ScrubConfig(Section):
    """Re-read and verify stored copies (agent/lifecycle/scrub.py)."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    cycle_days: float = Field(default=30.0, gt=0)
    share_per_run: float | None = Field(
        default=None, gt=0, le=1, description="fraction per run; default 1/cycle_days (daily)"
    )


class MetricsConfig(Section):
    namespace: str = Field(default="BackupAgent", min_length=1, max_length=255)
    prometheus: str | None = Field(
        default="127.0.0.1:9108", description="HOST:PORT of the Prometheus endpoint; null = off."
    )
    cloudwatch: bool = True
    instance_id: str | None = Field(
        default=None, description="InstanceId dimension; default: IMDSv2, then the hostname."
    )
    volume: str | None = Field(
        default=None, description="Volume dimension; default: storage.root as a string."
    )
    extra_dimensions: dict[str, str] = Field(default_factory=dict, max_length=8)
    imds_timeout: Annotated[Duration, within(maximum=timedelta(seconds=10), above_zero=True)] = (
        timedelta(seconds=1)
    )
    buffer_size: int = Field(default=20_000, ge=100)
    dashboard: str = Field(default="backup-agent", min_length=1, max_length=255)

    @field_validator("prometheus")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT (127.0.0.1:9108), or null to turn off")
        return value


class EmailConfig(Section):
    sender: str = Field(min_length=3)
    recipients: list[str] = Field(min_length=1, max_length=50)  # SES: 50 per message


class AlertsConfig(Section):
    sns_topic_arn: str | None = None
    email: EmailConfig | None = None
    disk_used_percent: float = Field(default=85.0, gt=0, lt=100)
    disk_recovery_margin: float = Field(
        default=5.0, ge=0, lt=100, description="Recovered when used % < threshold - margin."
    )
    window_seconds: float = Field(
        default=300.0, ge=1, description="At most one alert per kind per window; the rest summed."
    )
    max_examples: int = Field(default=5, ge=1, le=50)
    digest: bool = Field(default=False, description="Send a daily digest email.")

    @field_validator("sns_topic_arn")
    @classmethod
    def _topic_arn(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("arn:"):
            raise ValueError(f"{value!r} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        return value


class AlarmsConfig(Section):
    name_prefix: str = Field(default="backup-agent", min_length=1, max_length=100)
    disk_used_percent: float | None = Field(
        default=None, gt=0, lt=100, description="Default: alerts.disk_used_percent."
    )
    disk_periods: int = Field(default=2, ge=1, le=100)
    period_seconds: int = Field(default=300, ge=60)
    no_backup_hours: float = Field(default=24.0, gt=0)
    failed_backups: int = Field(
        default=0, ge=0, description="Alarm when more failures than this in one period."
    )
    dead_letter_messages: int = Field(
        default=0, ge=0, description="Alarm when the DLQ holds more messages than this."
    )


MAX_PRESIGN_SECONDS = 7 * 86400  # SigV4 presigned URLs live at most 7 days


class RestoreConfig(Section):
    """Restores and `share`: where shared copies are staged, and for how long."""

    staging_bucket: str | None = Field(
        default=None, description="Bucket for `backup-restore share`; null disables share."
    )
    staging_prefix: str = "backup-agent-share/"
    share_expiry: Annotated[Duration, within(above_zero=True, whole_seconds=True)] = Field(
        default=timedelta(days=1),
        description="Lifetime of a shared copy: the lifecycle rule and the longest URL.",
    )
    workers: int = Field(default=8, ge=1, le=256)
    recovery_buckets: list[str] = Field(
        default_factory=list,
        description=(
            "Buckets `restore --to-s3 --bucket B` writes to besides the backed-up ones; the"
            " operator IAM policy grants them PutObject. Never sent ExpectedBucketOwner."
        ),
    )

    @field_validator("recovery_buckets")
    @classmethod
    def _recovery_bucket_names(cls, value: list[str]) -> list[str]:
        return check_bucket_names(value)

    @field_validator("share_expiry")
    @classmethod
    def _expiry(cls, value: timedelta) -> timedelta:
        if value.total_seconds() > MAX_PRESIGN_SECONDS:
            shown = format_duration(value)
            raise ValueError(f"{shown!r} is longer than 7d (the longest presigned URL)")
        return value

    @field_validator("staging_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or not value.endswith("/") or value.startswith("/"):
            raise ValueError(f"{value!r} must be a non-empty prefix ending in '/' like 'share/'")
        return value

    @property
    def share_expiry_seconds(self) -> int:
        return int(self.share_expiry.total_seconds())


SECTION_JOBS = ("reconcile", "retention", "gc", "scrub", "snapshots")
"""Jobs whose schedule is their own section's `schedule` key, never `schedules.<job>`."""


def _not_a_section_job(name: str) -> str:
    if name in SECTION_JOBS:
        also = " (so does the snapshot-age alarm)" if name == "snapshots" else ""
        raise ValueError(f"the {name} job runs on {name}.schedule{also}; set it there instead")
    return name


JobName = Annotated[str, AfterValidator(_not_a_section_job)]


class Config(Section):
    aws: AwsConfig = AwsConfig()
    queue: QueueConfig
    buckets: list[str] = Field(min_length=1)
    storage: StorageConfig
    state: StateConfig
    consumer: ConsumerConfig = ConsumerConfig()
    logging: LoggingConfig = LoggingConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    retention: RetentionConfig = RetentionConfig()
    gc: GcConfig = GcConfig()
    scrub: ScrubConfig = ScrubConfig()
    metrics: MetricsConfig = MetricsConfig()
    alerts: AlertsConfig = AlertsConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    schedules: dict[JobName, Schedule | None] = Field(
        default_factory=dict, description="Job name → schedule; null turns the job off."
    )
    restore: RestoreConfig = RestoreConfig()
    snapshots: SnapshotsConfig = SnapshotsConfig()

    @field_validator("buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        return check_bucket_names(value)


def check_bucket_names(value: list[str]) -> list[str]:
    for name in value:
        if not (3 <= len(name) <= 63) or "/" in name:
            raise ValueError(f"{name!r} is not a bucket name")
    return value


CONFIG_OPTION_HELP = "default: $BACKUP_AGENT_CONFIG, then /etc/backup-agent/config.yaml"


def add_config_option(parser: Any) -> None:
    """`--config FILE` after the command name, the same for every command of both CLIs."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_OPTION_HELP)


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
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None
    _warn_deprecated(config)
    return config


_warned: set[str] = set()  # keys already warned about in this process (reloads stay quiet)


def _warn_deprecated(config: Config) -> None:
    """Log `config.deprecated` once per key: schedules written as a plain number of seconds."""
    for key, schedule in _plain_seconds(config, ""):
        if key in _warned:
            continue
        _warned.add(key)
        seconds = schedule.every.total_seconds() if schedule.every else 0.0
        log.warning(
            "config.deprecated",
            key=key,
            value=int(seconds) if seconds.is_integer() else seconds,
            use=schedule.to_config(),
            reason="a schedule as a plain number of seconds is deprecated; write the unit",
        )


def _plain_seconds(value: Any, key: str) -> Iterator[tuple[str, Schedule]]:
    if isinstance(value, Schedule):
        if value.plain_seconds:
            yield key, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _plain_seconds(getattr(value, name), f"{key}.{name}" if key else name)
    elif isinstance(value, dict):
        for name, inner in value.items():
            yield from _plain_seconds(inner, f"{key}.{name}")


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
    # A dict key's own error (schedules.snapshots) is reported at the key, without "[key]".
    location = ".".join(str(part) for part in error["loc"] if part != "[key]") or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{location}: field required"
    if kind == "extra_forbidden":
        return f"{location}: unknown key"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{location}: {message[:1].lower()}{message[1:]}"
