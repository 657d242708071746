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
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlparse

import structlog
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError
from agent.schedule import Duration, Schedule, at_least, cron, format_duration, within

log = structlog.get_logger("agent.config")

DEFAULT_CONFIG_PATH = Path("/etc/backup-agent/config.yaml")
CONFIG_ENV_VAR = "BACKUP_AGENT_CONFIG"


class Section(BaseModel):
    """Base for every section: unknown keys are errors (typos must not pass silently).

    Every number has an upper bound and none may be infinite or NaN: a value far beyond
    any sensible setting is a typo (or an attack), and must fail here, with its key,
    rather than overflow a timer or a date later in the running agent.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return region_name(value)

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
    retry_base_seconds: float = Field(default=5.0, gt=0, le=43200)
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


# -- auto-grow of the EBS volume (issue 17; docs/runbooks.md "The disk is full") ------------
class AutoGrowConfig(Section):
    """Off by default. The agent calls ec2:ModifyVolume on the backup volume itself; the
    filesystem is grown by the root-owned backup-agent-grow.path/.service units
    (`backup-agent grow-filesystem`), triggered by a request file in $STATE_DIRECTORY."""

    enabled: bool = False
    used_percent: float = Field(
        default=85.0, gt=0, lt=100, description="Grow when the volume is this much used."
    )
    step_percent: float = Field(
        default=20.0, gt=0, le=100, description="Grow by this share of the size,"
    )
    min_step_gib: int = Field(default=10, ge=1, le=16_384, description="and by at least this.")
    max_size_gib: int = Field(
        default=1024, ge=1, le=65_536, description="Never grow the volume past this size."
    )
    cooldown: Annotated[Duration, within(timedelta(hours=6), timedelta(days=7))] = Field(
        default=timedelta(hours=6),
        description="Since the volume's last modification began (EBS: one per 6 hours).",
    )
    check_every: Annotated[Duration, within(timedelta(seconds=30), timedelta(hours=1))] = Field(
        default=timedelta(minutes=1), description="How often the daemon checks and polls."
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Filesystem grow command (argv, no shell) for layouts other than ext4/XFS"
        " on the whole device, e.g. LVM. Run as root by `backup-agent grow-filesystem`, read"
        " from this root-owned config only.",
    )


class StorageConfig(Section):
    root: Path
    compression_level: int = Field(default=3, ge=1, le=22)
    compression_threads: int = Field(
        default=0, ge=0, le=64, description="zstd worker threads per object; 0 = one per CPU."
    )
    chunk_bytes: int = Field(default=1 << 20, ge=64 << 10, le=64 << 20)
    min_free_bytes: int = Field(default=256 << 20, ge=0, le=64 << 40)  # EBS: 64 TiB at most
    volume_id: str | None = Field(
        default=None,
        description="EBS volume id of the backup root; default: discovered from the mount.",
    )
    # Low space (docs/runbooks.md, "The disk is full"): the consumer pauses instead of churning.
    resume_headroom_bytes: int = Field(
        default=256 << 20,
        ge=0,
        description="After a pause for low space, resume once this much is free above"
        " min_free_bytes (hysteresis: no pause/resume flapping at the floor).",
    )
    hold_back: Annotated[
        Duration, within(timedelta(seconds=1), timedelta(hours=12), whole_seconds=True)
    ] = Field(
        default=timedelta(hours=1),
        description="Visibility of a message whose object does not fit in the space left while"
        " smaller ones do; doubled with each receive, at most 12 h.",
    )
    pause_recheck_max: Annotated[Duration, within(timedelta(seconds=1), timedelta(minutes=10))] = (
        Field(
            default=timedelta(minutes=1),
            description="While paused, the volume is checked again after 2 s, doubling up to this.",
        )
    )
    record_tags: bool = Field(
        default=True,
        description="Read each version's tags (one GetObjectTagging per object) for restore.",
    )
    auto_grow: AutoGrowConfig = Field(default_factory=AutoGrowConfig)  # issue 17

    @field_validator("volume_id")
    @classmethod
    def _ebs_volume_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"vol-[0-9a-f]{8,17}", value):
            raise ValueError(f"{value!r} is not an EBS volume id (vol-0123456789abcdef0)")
        return value

    @field_validator("root")
    @classmethod
    def _safe_root(cls, value: Path) -> Path:
        return safe_backup_root(value)


SYSTEM_DIRECTORIES = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/sys",
        "/tmp",  # noqa: S108 - refused, not used
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/local",
        "/usr/sbin",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/tmp",  # noqa: S108 - refused, not used
    }
)
"""Directories the backup root may never be (a directory below one, /var/backups, is fine):
the agent owns its root, init-volume writes into it and install.sh hands it to the agent."""


def safe_backup_root(root: Path) -> Path:
    """`root` if it may hold the backup volume; ValueError saying why not.

    Refused: a relative path, control characters (a newline would add a directive to the
    unit drop-in install.sh writes; an escape sequence would rewrite the operator's
    terminal), `..`, a system directory (also when reached through a symbolic link), and
    a root that is itself a symbolic link (whoever can swap the link moves the backups).
    """
    text = str(root)
    if not text.isprintable():
        raise ValueError(f"{text!r} contains control characters; give a plain path")
    if not root.is_absolute():
        raise ValueError(f"{text} is not an absolute path")
    if ".." in root.parts:
        raise ValueError(f"{text} must not contain '..'")
    canonical = "/" + "/".join(root.parts[1:])  # "//usr" and "/var/./" are /usr and /var
    if canonical in SYSTEM_DIRECTORIES:
        raise ValueError(f"{text} is the system directory {canonical}; mount a volume below it")
    if os.path.islink(canonical):
        target = os.path.realpath(canonical)
        raise ValueError(f"{text} is a symbolic link (to {target}); give the real directory")
    resolved = os.path.realpath(canonical)
    if resolved in SYSTEM_DIRECTORIES:
        raise ValueError(f"{text} leads to the system directory {resolved} through a link")
    return root


class StateConfig(Section):
    table: str = Field(min_length=3, max_length=255)


MAX_DRAIN = timedelta(hours=1)  # systemd's TimeoutStopSec= must be longer still


class ConsumerConfig(Section):
    workers: int = Field(default=4, ge=1, le=256)
    max_bytes_in_flight: int = Field(default=2 << 30, ge=1 << 20, le=1 << 40)
    drain_timeout: Annotated[Duration, within(maximum=MAX_DRAIN)] = timedelta(seconds=60)
    receive_ahead: bool = True  # after a run that ended well: agent/pipeline/last_run.py
    # versions remembered to answer a duplicate event without a request (~210 bytes each:
    # agent/pipeline/recent.py); 0 turns the memory off
    recent_versions: int = Field(default=65_536, ge=0, le=1 << 22)


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
        return None if value is None else region_name(value)


def region_name(value: str) -> str:
    """An AWS region's name, as AWS spells it (eu-west-1, us-gov-west-1, ap-southeast-2):
    `EU-WEST-1`, `eu-west1` or `eu-west` would otherwise fail only at the first AWS call,
    as an endpoint that does not resolve. Whether the queue is in that region is
    `check-config --online`'s to say."""
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", value):
        raise ValueError(f"{value!r} is not a region name like eu-west-1")
    return value


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        """`info` as well as `INFO` (Python's, Vector's and journald's own spellings differ)."""
        return value.upper() if isinstance(value, str) else value


class ReconcileConfig(Section):
    """Backfill: list the buckets and back up what the ledger lacks (lifecycle/reconcile.py)."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    objects_per_second: float = Field(default=20.0, gt=0, le=10_000)
    checkpoint_every: int = Field(default=100, ge=1, le=1_000_000)
    include_noncurrent: bool = True


# -- retention under pressure (issue 17; docs/runbooks.md "The disk is full") ----------------
class RetentionWhenFullConfig(Section):
    """Opt-in: what retention may expire while backups are paused for want of room and the
    volume cannot grow (lifecycle/pressure.py). First the normal rules are applied early, then
    the oldest non-current versions these stricter minimums allow, until the room is back."""

    keep_last_versions: int = Field(
        default=1,
        ge=1,
        le=1_000_000,
        description="Under pressure, keep at least the newest N versions of a key (never below 1).",
    )
    keep_younger_than: Duration | None = Field(
        default=None, description="Under pressure, still keep versions replaced less than this ago."
    )
    gc_grace_period: Annotated[Duration, within(timedelta(minutes=5), timedelta(days=365))] = Field(
        default=timedelta(hours=1),
        description="gc.grace_period for the collection that follows (copies written since are"
        " kept).",
    )
    check_every: Annotated[Duration, within(timedelta(minutes=1), timedelta(days=1))] = Field(
        default=timedelta(minutes=5),
        description="How often the daemon looks for a pause for low space that growing cannot end.",
    )


class RetentionConfig(Section):
    """Which recorded versions to keep (lifecycle/retention.py). Unset rules keep everything."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    keep_last_versions: int | None = Field(default=None, ge=1, le=1_000_000)
    keep_younger_than: Duration | None = None
    keep_deleted_days: float | None = Field(default=None, ge=0, le=36_500)
    when_full: RetentionWhenFullConfig | None = Field(
        default=None, description="Retention under pressure; null (the default): never."
    )


class GcConfig(Section):
    """Remove copies no record references (agent/lifecycle/gc.py)."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    grace_period: Annotated[Duration, within(maximum=timedelta(days=365))] = timedelta(hours=24)


class ScrubConfig(Section):
    """Re-read and verify stored copies (agent/lifecycle/scrub.py)."""

    schedule: Schedule | None = Field(
        default=None, description="interval (6h) or cron line; null: on demand only"
    )
    cycle_days: float = Field(default=30.0, gt=0, le=3650)
    share_per_run: float | None = Field(
        default=None, gt=0, le=1, description="fraction per run; default 1/cycle_days (daily)"
    )


class MetricsConfig(Section):
    namespace: str = Field(default="BackupAgent", min_length=1, max_length=255)
    prometheus: str | None = Field(
        default="127.0.0.1:19108", description="HOST:PORT of the Prometheus endpoint; null = off."
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
    buffer_size: int = Field(default=20_000, ge=100, le=10_000_000)
    dashboard: str = Field(default="backup-agent", min_length=1, max_length=255)

    @field_validator("prometheus")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT (127.0.0.1:19108), or null to turn off")
        return value


class EmailConfig(Section):
    sender: str = Field(min_length=3)
    recipients: list[str] = Field(min_length=1, max_length=50)  # SES: 50 per message


class WebhookConfig(Section):
    """A chat webhook (Slack, Teams, Mattermost…: JSON ``{"text": …}``). The URL is a secret:
    give the name of an environment variable holding it (`url_env`), or `url` itself."""

    url: str | None = Field(default=None, description="Prefer url_env: the URL is a secret.")
    url_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> WebhookConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        return self


class AlertsConfig(Section):
    sns_topic_arn: str | None = None
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None
    disk_used_percent: float = Field(default=85.0, gt=0, lt=100)
    disk_recovery_margin: float = Field(
        default=5.0, ge=0, lt=100, description="Recovered when used % < threshold - margin."
    )
    window_seconds: float = Field(
        default=300.0,
        ge=1,
        le=7 * 86400,
        description="At most one alert per kind per window; the rest summed.",
    )
    max_examples: int = Field(default=5, ge=1, le=50)
    digest: bool = Field(default=False, description="Send a daily digest email.")
    days_until_full: float = Field(
        default=7.0,
        gt=0,
        description="Alert (and alarm) when the volume is forecast to be full within this many"
        " days at its recent growth rate.",
    )

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
    period_seconds: int = Field(default=300, ge=60, le=86400)
    no_backup_hours: float | None = Field(
        default=None,
        gt=0,
        le=24 * 366,
        description=(
            "Opt-in: alarm after this long without a backup, for buckets expected to change at"
            " least that often (a quiet bucket would page otherwise)."
        ),
    )
    oldest_message_minutes: float = Field(
        default=60.0,
        gt=0,
        le=14 * 24 * 60,
        description="Alarm when the main queue's oldest message is older than this.",
    )
    failed_backups: int = Field(
        default=0,
        ge=0,
        le=1_000_000_000,
        description="Alarm when more failures than this in one period.",
    )
    dead_letter_messages: int = Field(
        default=0,
        ge=0,
        le=1_000_000_000,
        description="Alarm when the DLQ holds more messages than this.",
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


# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy, retentionInDays).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)  # fmt: skip


class AuditConfig(Section):
    """Who touched the backups (agent/audit/): records on the volume, optionally shipped."""

    log_group: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="CloudWatch Logs group the records are also sent to (bootstrap creates it)",
    )
    log_retention_days: int = Field(default=365, description="the log group's retention")

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"{value} is not a CloudWatch Logs retention ({LOG_RETENTION_DAYS})")
        return value


class InventoryConfig(Section):
    """The ledger exported for Athena (agent/audit/inventory.py)."""

    schedule: Schedule | None = Field(
        default=None, description="interval (1d) or cron line; null: on demand only"
    )
    bucket: str | None = Field(default=None, description="where the export goes")
    prefix: str = "backup-agent-inventory/"

    @field_validator("prefix")
    @classmethod
    def _inventory_prefix(cls, value: str) -> str:
        if not value or not value.endswith("/") or value.startswith("/"):
            raise ValueError(f"{value!r} must be a non-empty prefix ending in '/'")
        return value


SECTION_JOBS = ("reconcile", "retention", "gc", "scrub", "snapshots", "inventory")
"""Jobs whose schedule is their own section's `schedule` key, never `schedules.<job>`."""


def _not_a_section_job(name: str) -> str:
    if name in SECTION_JOBS:
        also = " (so does the snapshot-age alarm)" if name == "snapshots" else ""
        raise ValueError(f"the {name} job runs on {name}.schedule{also}; set it there instead")
    return name


JobName = Annotated[str, AfterValidator(_not_a_section_job)]


class CategoryRule(Section):
    """One `categories:` entry: a name and exactly one way to recognise its objects."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$")
    prefix: str | None = None
    glob: str | None = Field(default=None, min_length=1)
    content_type: str | None = Field(default=None, min_length=1, description="A prefix.")
    tag: str | None = Field(default=None, pattern=r"^[^=]+=.*$", description="KEY=VALUE")

    @model_validator(mode="after")
    def _one_test(self) -> CategoryRule:
        given = [n for n in ("prefix", "glob", "content_type", "tag") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of prefix, glob, content_type, tag")
        return self


# -- a fleet with replicas (issue 20; docs/fleet.md "Replicas") -----------------------------
MAX_REPLICAS = 10
_GROUP_QUEUE = re.compile(r"(?P<base>.+)-(?P<number>[1-9][0-9]?)")


class FleetConfig(Section):
    """`replicas: R`: R volumes hold each version. With R > 1 the bucket notifies an SNS
    topic, `<base>-fanout`, subscribed by R queues `<base>-1` … `<base>-R` (one replica
    group each); `queue.url` names the group this agent belongs to."""

    replicas: int = Field(
        default=1, ge=1, le=MAX_REPLICAS, description="Volumes that hold each version."
    )


class ReplicaGroups:
    """The fan-out's names, derived from `queue.url` (every member computes the same)."""

    def __init__(self, base: str, replicas: int, own: str) -> None:
        self.base = base
        self.replicas = replicas
        self.own = own  # this agent's group: its queue's name

    @property
    def queues(self) -> list[str]:
        return [f"{self.base}-{n}" for n in range(1, self.replicas + 1)]

    @property
    def topic(self) -> str:
        return f"{self.base}-fanout"


def replica_groups(config: Config) -> ReplicaGroups | None:
    """The fleet's replica groups, or None with `fleet.replicas: 1` (S3 notifies the one
    queue directly, the ledger records no groups)."""
    if config.fleet.replicas == 1:
        return None
    match = _GROUP_QUEUE.fullmatch(config.queue.name)
    assert match is not None  # Config._replica_queue checked it
    return ReplicaGroups(match["base"], config.fleet.replicas, config.queue.name)


def replica_group(config: Config) -> str | None:
    """The replica group this agent belongs to (its queue's name), or None without replicas."""
    groups = replica_groups(config)
    return groups.own if groups else None


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
    categories: list[CategoryRule] = Field(
        default_factory=list, max_length=200, description="First match names a version."
    )
    audit: AuditConfig = AuditConfig()
    inventory: InventoryConfig = InventoryConfig()
    fleet: FleetConfig = FleetConfig()

    @field_validator("buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        return check_bucket_names(value)

    @model_validator(mode="after")
    def _replica_queue(self) -> Config:
        """With replicas, the queue names its group: `<base>-<n>`, n in 1…R; its dead-letter
        queue is `<queue>-dlq`, as bootstrap creates it for every group."""
        replicas = self.fleet.replicas
        if replicas == 1:
            return self
        match = _GROUP_QUEUE.fullmatch(self.queue.name)
        if match is None or int(match["number"]) > replicas:
            raise ValueError(
                f"fleet.replicas: {replicas} needs queue.url to name a replica group's queue,"
                f" <base>-1 … <base>-{replicas}, not {self.queue.name!r}"
            )
        if self.queue.dead_letter_name != self.queue.name + "-dlq":
            raise ValueError(
                f"fleet.replicas: {replicas} needs queue.dead_letter_url unset or"
                f" {self.queue.name}-dlq (every group's dead-letter queue is <queue>-dlq)"
            )
        return self


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
    raw = read_yaml(Path(path))
    return parse_config(raw)


def parse_config(raw: Any) -> Config:
    """Validate a loaded document; every failure, expected or not, is a ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(
            ["(top level): expected a mapping of sections, got " + type(raw).__name__]
        )
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None
    except Exception as exc:  # noqa: BLE001 - a validator that crashes must not crash the agent
        where = _crashing_key(Config, raw) or "(top level)"
        raise ConfigError([f"{where}: cannot be read ({type(exc).__name__}: {exc})"]) from None
    _warn_deprecated(config)
    return config


def _crashing_key(model: type[BaseModel], raw: dict[Any, Any], prefix: str = "") -> str | None:
    """The dotted key whose value makes validation raise something other than a
    ValidationError (found by validating one key at a time), or None."""
    for name, value in raw.items():
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if field is None:
            continue
        try:
            model.model_validate({name: value})
        except ValidationError:
            continue
        except Exception:  # noqa: BLE001 - this is the key we are looking for
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                for inner_model in _models_in(field.annotation):
                    inner = _crashing_key(inner_model, value, key + ".")
                    if inner:
                        return inner
            return key
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The sections an annotation names: `EmailConfig`, `EmailConfig | None`."""
    candidates = [annotation, *get_args(annotation)]
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


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


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KiB; more is a mistake or an attack
MAX_DEPTH = 32  # sections are 3 levels deep; 32 leaves room and stays far from the stack
MAX_VALUES = 100_000  # values in the document once every alias is expanded


def read_yaml(path: Path) -> Any:
    """The YAML document at `path`, read strictly; ConfigError saying what is wrong.

    Strict: a duplicate key is an error (YAML's own rule; PyYAML lets the last one win),
    nesting deeper than MAX_DEPTH or more than MAX_VALUES values after expanding aliases
    (a "billion laughs") is refused, and so is any value the loader cannot build.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data() or {}
    except _Refused as exc:
        raise ConfigError([str(exc)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises is a config error
        raise ConfigError([f"{path}: cannot be read ({type(exc).__name__}: {exc})"]) from None
    finally:
        loader.dispose()


class _Refused(yaml.YAMLError):
    """A document the strict loader refuses: `key: reason (line N)`."""

    def __init__(self, key: str, reason: str, mark: Any = None) -> None:
        line = f" (line {mark.line + 1})" if mark is not None else ""
        super().__init__(f"{key or '(top level)'}: {reason}{line}")


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with the checks `read_yaml` promises, done while composing,
    before any value is built: each node's dotted key is known, depth and size are counted
    as the document is read, so nothing unbounded is ever built or printed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._keys: list[str] = []
        self._paths: dict[int, str] = {}  # id(node) -> its dotted key, for construct errors
        self._sizes: dict[int, int] = {}  # id(node) -> values below it, aliases expanded

    def _here(self, extra: str | None = None) -> str:
        keys = self._keys if extra is None else [*self._keys, extra]
        shown = ".".join(keys[:4]) + ("…" if len(keys) > 4 else "")
        return shown

    def compose_node(self, parent: Any, index: Any) -> Any:
        if isinstance(index, yaml.ScalarNode):
            step = str(index.value)
        elif isinstance(index, int):
            step = str(index)
        else:  # a mapping's key, or the document itself
            return self._size(super().compose_node(parent, index))
        self._keys.append(step)
        try:
            if len(self._keys) > MAX_DEPTH:
                mark = self.get_mark()
                raise _Refused(self._here(), f"nested deeper than {MAX_DEPTH} levels", mark)
            return self._size(super().compose_node(parent, index))
        finally:
            self._keys.pop()

    def _size(self, node: Any) -> Any:
        key = id(node)
        if key not in self._sizes:
            self._paths[key] = ".".join(self._keys)
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes.get(id(item), 1) for item in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(
                    self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value
                )
            else:
                size = 1
            if size > MAX_VALUES:
                raise _Refused(
                    self._here(),
                    f"more than {MAX_VALUES} values once its aliases are expanded"
                    " (a YAML alias bomb?)",
                    node.start_mark,
                )
            self._sizes[key] = size
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, Any] = {}
        for key_node, _value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # a merged key may be overridden: that is what `<<` is for
            key = self.construct_object(key_node)  # _Refused, with its key, if it cannot be
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise _Refused(
                    self._here(str(key_node.value)),
                    f"duplicate key at line {key_node.start_mark.line + 1} (first at line {first})",
                )
            seen[key] = key_node
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - a value PyYAML cannot build (int of 5000 digits)
            key = self._paths.get(id(node), "")
            raise _Refused(
                key, f"cannot be read ({type(exc).__name__}: {exc})", node.start_mark
            ) from None


_KEYED = re.compile(r"[a-z_]+(\.[a-z_]+)+: .*", re.DOTALL)


def _describe(error: Any) -> str:
    # A dict key's own error (schedules.snapshots) is reported at the key, without "[key]".
    location = ".".join(str(part) for part in error["loc"] if part != "[key]") or "(top level)"
    kind = error["type"]
    keyed = _KEYED.match(error["msg"].removeprefix("Value error, "))
    if location == "(top level)" and keyed:  # a check across sections names its key itself
        return keyed[0]
    if kind == "missing":
        return f"{location}: field required"
    if kind == "extra_forbidden":
        return f"{location}: unknown key"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{location}: {message[:1].lower()}{message[1:]}"
