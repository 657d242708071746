"""Where notices go: rendered as a subject and text/HTML bodies, sent by SNS, SES email or
a chat webhook.

`render` gives a notice's subject and bodies; a `Channel` sends it (`SnsChannel`: every
kind but the digest, `EmailChannel`: every kind, `WebhookChannel`: every kind, as
``{"text": …}``, which Slack, Microsoft Teams and Mattermost incoming webhooks take);
`build_channels` makes the channels the `alerts:` section configures.
"""

from __future__ import annotations

import email.utils
import html
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from agent import json_text
from agent.aws import Clients
from agent.config import AlertsConfig, WebhookConfig
from agent.errors import ConfigError, PermanentError, RetryableError
from agent.monitoring.alerts import TITLES, AlertKind, Notice

if TYPE_CHECKING:
    from mypy_boto3_ses import SESClient
    from mypy_boto3_sns import SNSClient

# SNS Publish: "Subjects must be UTF-8 text with no line breaks or control characters, and
# less than 100 characters long" (https://docs.aws.amazon.com/sns/latest/api/API_Publish.html).
SUBJECT_LIMIT = 99


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

    def __init__(self, sns: SNSClient, topic_arn: str) -> None:
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

    def __init__(self, ses: SESClient, sender: str, recipients: Sequence[str]) -> None:
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


# What a chat message may hold: Slack truncates `text` past 40,000 characters, Teams refuses
# a payload over about 28 KB (https://api.slack.com/methods/chat.postMessage,
# https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using).
WEBHOOK_TEXT_LIMIT = 20_000


class WebhookBusy(RetryableError):
    """The receiver is down, slow, or asked to wait (429, 5xx): try again later, not sooner
    than `retry_after` seconds when it said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WebhookRefused(PermanentError):
    """The receiver refused the message for good (a 4xx other than 408 and 429: a revoked
    or mistyped URL): sending it again cannot help."""


Post = Callable[[urllib.request.Request, float], int]


def _post(request: urllib.request.Request, timeout: float) -> int:
    # http(s) only: WebhookChannel checks the scheme before any request is made
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        status: int = response.status
        return status


class WebhookChannel:
    """POST ``{"text": subject + body}`` as JSON. The URL is never logged (it is the secret)."""

    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 5.0, post: Post = _post) -> None:
        if not url.startswith(("https://", "http://")):
            raise ConfigError([f"alerts.webhook: the URL is not http(s) ({url[:8]}…)"])
        self._url = url
        self.timeout = timeout
        self._post = post

    def wants(self, kind: AlertKind) -> bool:
        return True

    def send(self, notice: Notice, message: Message) -> None:
        text = f"*{message.subject}*\n{message.text}"
        if len(text) > WEBHOOK_TEXT_LIMIT:
            text = text[: WEBHOOK_TEXT_LIMIT - 1] + "…"
        body = json_text.dumps({"text": text}).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        try:
            self._post(request, self.timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc.code, exc.headers.get("Retry-After")) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out, DNS
            reason = getattr(exc, "reason", exc)
            raise WebhookBusy(f"webhook unreachable: {reason}") from None


def _http_error(status: int, retry_after: str | None) -> Exception:
    if status in (408, 429) or status >= 500:
        return WebhookBusy(f"webhook answered {status}", _retry_after_seconds(retry_after))
    return WebhookRefused(f"webhook answered {status}")


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After``: seconds, or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def webhook_url(webhook: WebhookConfig, environ: Mapping[str, str]) -> str:
    """The webhook's URL: from the environment variable `url_env` names, else `url`."""
    if webhook.url_env is not None:
        url = environ.get(webhook.url_env, "").strip()
        if not url:
            raise ConfigError([f"alerts.webhook.url_env: ${webhook.url_env} is not set"])
        return url
    assert webhook.url is not None  # the config requires one of the two
    return webhook.url


def build_channels(
    alerts_config: AlertsConfig, clients: Clients, environ: Mapping[str, str] | None = None
) -> list[Channel]:
    """SNS, SES and/or a webhook from the `alerts:` section."""
    channels: list[Channel] = []
    if alerts_config.sns_topic_arn:
        channels.append(SnsChannel(clients.sns(), alerts_config.sns_topic_arn))
    if alerts_config.email is not None:
        email = alerts_config.email
        channels.append(EmailChannel(clients.ses(), email.sender, email.recipients))
    if alerts_config.webhook is not None:
        hook = alerts_config.webhook
        url = webhook_url(hook, os.environ if environ is None else environ)
        channels.append(WebhookChannel(url, timeout=hook.timeout_seconds))
    return channels
