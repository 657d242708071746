"""Where notices go: rendered as a subject and text/HTML bodies, sent by SNS or SES email.

`render` gives a notice's subject and bodies; a `Channel` sends it (`SnsChannel`: every
kind but the digest, `EmailChannel`: every kind); `build_channels` makes the channels
the `alerts:` section configures.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from agent.aws import Clients
from agent.config import AlertsConfig
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


def build_channels(alerts_config: AlertsConfig, clients: Clients) -> list[Channel]:
    """SNS and/or SES from the `alerts:` section."""
    channels: list[Channel] = []
    if alerts_config.sns_topic_arn:
        channels.append(SnsChannel(clients.sns(), alerts_config.sns_topic_arn))
    if alerts_config.email is not None:
        email = alerts_config.email
        channels.append(EmailChannel(clients.ses(), email.sender, email.recipients))
    return channels
