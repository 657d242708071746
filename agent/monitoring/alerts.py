"""Alerts by SNS and SES email: deduplicated, rate-limited, delivered off the backup path.

`AlertDispatcher.submit(alert)` takes a lock, updates a counter and returns: it never
waits for the network. Per alert kind, the first alert of a quiet period is sent at once;
what follows within `window_seconds` is folded into one summary sent when the window ends,
carrying the count and a few distinct examples. A storm of 10,000 failures therefore
yields one alert, then one summary per window while the storm lasts.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import html
import json
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.aws import classify, error_code
from agent.errors import PermanentError

log = structlog.get_logger("agent.alerts")

SUBJECT_LIMIT = 100  # SNS rejects longer subjects


class AlertKind(enum.Enum):
    BACKUP_FAILED = "backup_failed"
    DEAD_LETTER = "dead_letter"
    DISK_SPACE_LOW = "disk_space_low"
    DISK_SPACE_RECOVERED = "disk_space_recovered"
    INTEGRITY_FAILURE = "integrity_failure"
    CONFIG_REJECTED = "config_rejected"
    AGENT_STOPPED = "agent_stopped_on_error"
    OPERATIONAL = "operational"  # volume not ready, volume unencrypted, a job's finding
    DIGEST = "digest"


TITLES = {
    AlertKind.BACKUP_FAILED: "Backup failed for good",
    AlertKind.DEAD_LETTER: "Messages in the dead-letter queue",
    AlertKind.DISK_SPACE_LOW: "Backup volume is filling up",
    AlertKind.DISK_SPACE_RECOVERED: "Backup volume space recovered",
    AlertKind.INTEGRITY_FAILURE: "Integrity check failed",
    AlertKind.CONFIG_REJECTED: "Configuration rejected",
    AlertKind.AGENT_STOPPED: "Backup agent stopped on an error",
    AlertKind.OPERATIONAL: "Backup agent needs attention",
    AlertKind.DIGEST: "Daily backup digest",
}
SEVERITY = {
    AlertKind.DISK_SPACE_RECOVERED: "info",
    AlertKind.DIGEST: "info",
}


@dataclass(frozen=True)
class Alert:
    """One thing that went wrong. `key` names it: equal keys in a window count once."""

    kind: AlertKind
    key: str
    summary: str
    details: Mapping[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Notice:
    """What is delivered: one alert, or a summary of `count` alerts of one kind."""

    kind: AlertKind
    count: int
    examples: tuple[Alert, ...]
    first_at: float
    last_at: float
    is_summary: bool = False

    @property
    def distinct(self) -> int:
        return len({a.key for a in self.examples})


@dataclass
class _Pending:
    count: int = 0
    examples: dict[str, Alert] = field(default_factory=dict)
    first_at: float = 0.0
    last_at: float = 0.0


class RateLimiter:
    """Per kind: send the first alert of a quiet window, fold the rest into one summary."""

    def __init__(self, window_seconds: float = 300.0, max_examples: int = 5) -> None:
        self.window = window_seconds
        self.max_examples = max_examples
        self._last_sent: dict[AlertKind, float] = {}
        self._pending: dict[AlertKind, _Pending] = {}
        self.suppressed: Counter[str] = Counter()

    def offer(self, alert: Alert, now: float) -> Notice | None:
        """A notice to send now, or None when the alert was folded into a pending summary."""
        last = self._last_sent.get(alert.kind)
        if alert.kind not in self._pending and (last is None or now - last >= self.window):
            self._last_sent[alert.kind] = now
            return Notice(alert.kind, 1, (alert,), alert.at, alert.at)
        pending = self._pending.setdefault(alert.kind, _Pending(first_at=alert.at))
        pending.count += 1
        pending.last_at = alert.at
        if alert.key not in pending.examples and len(pending.examples) < self.max_examples:
            pending.examples[alert.key] = alert
        self.suppressed[alert.kind.value] += 1
        return None

    def due(self, now: float, *, flush: bool = False) -> list[Notice]:
        """Summaries whose window has ended (all of them with `flush`)."""
        notices = []
        for kind in list(self._pending):
            if not flush and now - self._last_sent.get(kind, 0.0) < self.window:
                continue
            pending = self._pending.pop(kind)
            self._last_sent[kind] = now
            notices.append(
                Notice(
                    kind,
                    pending.count,
                    tuple(pending.examples.values()),
                    pending.first_at,
                    pending.last_at,
                    is_summary=True,
                )
            )
        return notices


# -- rendering -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    html: str


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def subject_for(notice: Notice, context: Mapping[str, str]) -> str:
    where = context.get("InstanceId") or context.get("host") or ""
    title = TITLES[notice.kind]
    if notice.is_summary:
        title = f"{title}: {notice.count} more"
    subject = f"[backup-agent] {title}" + (f" on {where}" if where else "")
    printable = "".join(c if 32 <= ord(c) < 127 else "?" for c in subject)
    return printable[:SUBJECT_LIMIT]


def render(notice: Notice, context: Mapping[str, str]) -> Message:
    """Plain text and HTML bodies with the same content."""
    subject = subject_for(notice, context)
    head = TITLES[notice.kind]
    if notice.is_summary:
        intro = (
            f"{notice.count} more alert(s) of this kind between {_when(notice.first_at)}"
            f" and {_when(notice.last_at)}. Examples ({len(notice.examples)}):"
        )
    else:
        intro = f"At {_when(notice.first_at)}:"
    lines = [head, "", intro, ""]
    for alert in notice.examples:
        lines.append(f"- {alert.summary}")
        lines.extend(f"    {k}: {v}" for k, v in alert.details.items())
    lines.append("")
    lines.extend(f"{k}: {v}" for k, v in context.items())
    text = "\n".join(lines) + "\n"

    items = []
    for alert in notice.examples:
        detail = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in alert.details.items()
        )
        table = f"<table>{detail}</table>" if detail else ""
        items.append(f"<li>{html.escape(alert.summary)}{table}</li>")
    where = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in context.items()
    )
    body = (
        f"<html><body><h2>{html.escape(head)}</h2><p>{html.escape(intro)}</p>"
        f"<ul>{''.join(items)}</ul><table>{where}</table></body></html>"
    )
    return Message(subject, text, body)


# -- channels ------------------------------------------------------------------------------


class Channel(Protocol):
    name: str

    def wants(self, kind: AlertKind) -> bool: ...

    def send(self, notice: Notice, message: Message) -> None: ...


class SnsChannel:
    name = "sns"

    def __init__(self, sns: Any, topic_arn: str) -> None:
        self.sns = sns
        self.topic_arn = topic_arn

    def wants(self, kind: AlertKind) -> bool:
        return kind is not AlertKind.DIGEST  # the digest is an email

    def send(self, notice: Notice, message: Message) -> None:
        self.sns.publish(
            TopicArn=self.topic_arn,
            Subject=message.subject,
            Message=message.text,
            MessageAttributes={
                "kind": {"DataType": "String", "StringValue": notice.kind.value},
                "count": {"DataType": "Number", "StringValue": str(notice.count)},
            },
        )


class EmailChannel:
    name = "email"

    def __init__(self, ses: Any, sender: str, recipients: Sequence[str]) -> None:
        self.ses = ses
        self.sender = sender
        self.recipients = list(recipients)

    def wants(self, kind: AlertKind) -> bool:
        return True

    def send(self, notice: Notice, message: Message) -> None:
        self.ses.send_email(
            Source=self.sender,
            Destination={"ToAddresses": self.recipients},
            Message={
                "Subject": {"Data": message.subject, "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": message.text, "Charset": "UTF-8"},
                    "Html": {"Data": message.html, "Charset": "UTF-8"},
                },
            },
        )


# -- dispatching ---------------------------------------------------------------------------


class AlertDispatcher:
    """Rate-limits alerts on the caller's thread (cheap) and delivers on its own thread."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        context: Mapping[str, str] | None = None,
        window_seconds: float = 300.0,
        max_examples: int = 5,
        clock: Callable[[], float] = time.time,
        tick_seconds: float = 1.0,
        retry_seconds: float = 30.0,
        max_unsent: int = 100,
    ) -> None:
        self.channels = list(channels)
        self.context = dict(context or {})
        self.limiter = RateLimiter(window_seconds, max_examples)
        self.clock = clock
        self.tick = tick_seconds
        self.sent: Counter[str] = Counter()
        self.delivery_failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._outbox: queue.Queue[Notice | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()
        # notices a channel failed to deliver, retried every `retry_seconds` until it answers
        self.retry_seconds = retry_seconds
        self._unsent: collections.deque[tuple[Notice, Channel]] = collections.deque(
            maxlen=max_unsent
        )
        self._next_retry = 0.0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="alerts", daemon=True)
            self._thread.start()

    def submit(self, alert: Alert) -> None:
        """Never blocks on the network; safe from any thread."""
        if not self.channels:
            return
        with self._lock:
            notice = self.limiter.offer(alert, self.clock())
        if notice is not None:
            self._outbox.put(notice)

    def send_now(self, notice: Notice) -> None:
        """Queue a notice past the rate limiter (the daily digest)."""
        if self.channels:
            self._outbox.put(notice)

    def sent_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.sent)

    def suppressed(self) -> dict[str, int]:
        with self._lock:
            return dict(self.limiter.suppressed)

    def stop(self, timeout: float = 10.0) -> None:
        """Send pending summaries, then stop the delivery thread (waiting up to `timeout`)."""
        with self._lock:
            for notice in self.limiter.due(self.clock(), flush=True):
                self._outbox.put(notice)
        self._stopping.set()
        self._outbox.put(None)
        if self._thread is None:
            self._drain()  # never started: deliver on the caller's thread
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("alert.stop_timed_out", unsent=self._outbox.qsize())
        self._thread = None

    def _loop(self) -> None:
        while True:
            try:
                notice = self._outbox.get(timeout=self.tick)
            except queue.Empty:
                notice = None
                if self._stopping.is_set():
                    return
            if notice is not None:
                self._deliver(notice)
            elif self._stopping.is_set() and self._outbox.empty():
                self._retry_unsent(force=True)
                return
            with self._lock:
                due = self.limiter.due(self.clock())
            for summary in due:
                self._deliver(summary)
            self._retry_unsent()

    def _drain(self) -> None:
        while True:
            try:
                notice = self._outbox.get_nowait()
            except queue.Empty:
                self._retry_unsent(force=True)
                return
            if notice is not None:
                self._deliver(notice)

    def _retry_unsent(self, *, force: bool = False) -> None:
        """Deliver again what a channel failed to take (once per `retry_seconds`)."""
        if not self._unsent or (not force and time.monotonic() < self._next_retry):
            return
        self._next_retry = time.monotonic() + self.retry_seconds
        for _ in range(len(self._unsent)):
            notice, channel = self._unsent.popleft()
            self._deliver(notice, only=channel)

    def _keep_for_retry(self, notice: Notice, channel: Channel) -> None:
        if len(self._unsent) == self._unsent.maxlen:  # the oldest goes
            self.dropped += 1
            log.warning("alert.unsent_dropped", channel=channel.name, dropped=self.dropped)
        elif not self._unsent:
            self._next_retry = time.monotonic() + self.retry_seconds
        self._unsent.append((notice, channel))

    def _deliver(self, notice: Notice, only: Channel | None = None) -> None:
        message = render(notice, self.context)
        for channel in self.channels if only is None else [only]:
            if not channel.wants(notice.kind):
                continue
            try:
                channel.send(notice, message)
            except Exception as exc:  # noqa: BLE001 - the delivery thread must outlive any failure
                self.delivery_failures[channel.name] += 1
                if isinstance(classify(exc, channel.name), PermanentError):
                    # AccessDenied, an unverified sender...: retrying every round cannot help
                    self.dropped += 1
                    log.error(
                        "alert.unsent_dropped",
                        channel=channel.name,
                        kind=notice.kind.value,
                        reason="permanent",
                        code=error_code(exc),
                    )
                else:
                    self._keep_for_retry(notice, channel)
                if channel.name not in self._failing:
                    self._failing.add(channel.name)
                    log.error(
                        "alert.delivery_failed",
                        channel=channel.name,
                        kind=notice.kind.value,
                        subject=message.subject,
                        error=str(exc),
                        code=error_code(exc),
                    )
                continue
            if channel.name in self._failing:
                self._failing.discard(channel.name)
                log.info("alert.delivery_recovered", channel=channel.name)
            with self._lock:
                self.sent[notice.kind.value] += 1
            log.info(
                "alert.sent",
                channel=channel.name,
                kind=notice.kind.value,
                count=notice.count,
                subject=message.subject,
            )


def build_channels(alerts_config: Any, client: Callable[[str], Any]) -> list[Channel]:
    """SNS and/or SES from the `alerts:` section; `client(service)` builds boto3 clients."""
    channels: list[Channel] = []
    if alerts_config.sns_topic_arn:
        channels.append(SnsChannel(client("sns"), alerts_config.sns_topic_arn))
    if alerts_config.email is not None:
        email = alerts_config.email
        channels.append(EmailChannel(client("ses"), email.sender, email.recipients))
    return channels


# -- alerts the agent raises ---------------------------------------------------------------


def backup_gave_up(message_id: str, reasons: Sequence[str]) -> Alert:
    first = reasons[0] if reasons else "no reason recorded"
    return Alert(
        AlertKind.BACKUP_FAILED,
        key=message_id,
        summary=f"message {message_id}: {first}",
        details={f"also {n}": r for n, r in enumerate(reasons[1:5], start=2)},
    )


def integrity_failure(where: str, error: str) -> Alert:
    return Alert(
        AlertKind.INTEGRITY_FAILURE, key=where, summary=f"{where}: {error}", details={"at": where}
    )


def operational(subject: str, detail: str) -> Alert:
    return Alert(AlertKind.OPERATIONAL, key=subject, summary=f"{subject}: {detail}")


def agent_stopped(error: BaseException) -> Alert:
    text = f"{type(error).__name__}: {error}"
    return Alert(AlertKind.AGENT_STOPPED, key=text, summary=text)


def config_rejected(path: str, problems: Sequence[str]) -> Alert:
    return Alert(
        AlertKind.CONFIG_REJECTED,
        key=path,
        summary=f"{path}: {len(problems)} problem(s)",
        details={f"problem {n + 1}": p for n, p in enumerate(problems[:20])},
    )


# -- a rejected configuration --------------------------------------------------------------

REJECTED_REPEAT_SECONDS = 3600.0


def report_rejected_config(
    path: Path,
    problems: Sequence[str],
    *,
    client: Callable[[str], Any] | None = None,
    state_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Alert that the agent cannot start because its config is invalid.

    Best effort: the `alerts:` and `aws:` sections are salvaged from the raw file; if
    they are unusable nothing is sent. The same problems are reported at most once an
    hour, so a restart loop under systemd does not mail the operator every few seconds.
    """
    from agent.config import AlertsConfig, AwsConfig

    try:
        import yaml

        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
    make = client or _standalone_client(aws_config)
    dispatcher = AlertDispatcher(build_channels(alerts_config, make), context=_host_context())
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


def _standalone_client(aws_config: Any) -> Callable[[str], Any]:
    import boto3
    import botocore.config

    session = boto3.session.Session(region_name=aws_config.region)
    settings = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10
    )

    def make(service: str) -> Any:
        return session.client(  # type: ignore[call-overload]
            service, endpoint_url=aws_config.endpoint_url, config=settings
        )

    return make


def _host_context() -> dict[str, str]:
    import socket

    return {"host": socket.gethostname()}
