"""SQS message bodies → typed object events.

Every shape S3 events reach SQS in is accepted:

* S3 event notifications (``{"Records": [...]}``, keys URL-encoded, ``+`` is a space);
* the same inside an SNS envelope (``{"Type": "Notification", "Message": "<json>"}``),
  or delivered raw by SNS (then it is the plain notification);
* EventBridge ``Object Created`` / ``Object Deleted`` events (keys not encoded);
* ``s3:TestEvent`` (sent when a notification is configured: acknowledged, nothing to do).

What an event name means (`event_kind`; the names are listed at
https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-event-types-and-destinations.html):

* ``ObjectCreated:*`` and ``ObjectRestore:Completed`` (an archived version is readable
  again) are CREATED: the version is backed up;
* ``ObjectRemoved:*`` and ``LifecycleExpiration:*`` (S3 Lifecycle deleting: its own names,
  never ``ObjectRemoved``) are REMOVED, a delete marker when the name ends in
  ``DeleteMarkerCreated``; the event name is kept on the record, so the ledger can tell
  a lifecycle expiration from a user's delete;
* every other name (``ObjectRestore:Post``/``Delete``, ``Replication:*``, ``ObjectTagging:*``,
  ``ObjectAcl:Put``, ``IntelligentTiering``, ``LifecycleTransition``, ``s3:TestEvent`` and names
  S3 adds later) changes no object's bytes: the record is an `IgnoredEvent`, left alone on
  purpose, never malformed.

A body that is no event at all raises MalformedMessage; the consumer releases it for the
DLQ redrive.
"""

from __future__ import annotations

import contextlib
import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from agent.errors import MalformedMessage
from agent.order import event_key

MAX_KEY_BYTES = 1024
SEQUENCER_WIDTH = 64
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class EventKind(enum.Enum):
    CREATED = "created"
    REMOVED = "removed"


RESTORE_COMPLETED = "ObjectRestore:Completed"
TEST_EVENT = "s3:TestEvent"


def event_kind(name: str) -> EventKind | None:
    """What an S3 event name means for the backup; None: nothing to do (ignored on purpose)."""
    bare = name.removeprefix("s3:")
    if bare.startswith("ObjectCreated:") or is_restore_completed(name):
        return EventKind.CREATED
    if bare.startswith(("ObjectRemoved:", "LifecycleExpiration:")):
        return EventKind.REMOVED
    return None


def is_restore_completed(name: str) -> bool:
    return name.removeprefix("s3:") == RESTORE_COMPLETED


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One object-level change, as the event reported it (not yet verified against S3)."""

    kind: EventKind
    bucket: str
    key: str
    event_name: str
    event_time: datetime
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    sequencer: str | None = None
    delete_marker: bool = False

    @property
    def restored(self) -> bool:
        """An archived version made readable again (`ObjectRestore:Completed`), not a new one."""
        return is_restore_completed(self.event_name)

    @property
    def order_key(self) -> str:
        """This change's place among the versions of its key (agent/order.py): the time to
        the second, then the sequencer (right-padded, S3's documented rule) or the time."""
        return event_key(self.event_time, self.sequencer)

    @property
    def version_token(self) -> str:
        """A stable id for this version of the key, identical across duplicate deliveries."""
        if self.version_id and self.version_id != "null":
            return "v:" + self.version_id
        if self.sequencer:
            return "s:" + self.sequencer.upper().ljust(SEQUENCER_WIDTH, "0")
        return f"t:{self.event_time.strftime('%Y%m%dT%H%M%S.%fZ')}:{self.etag or '-'}"


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A record the agent leaves alone on purpose: its name, and where it happened if known."""

    event_name: str
    bucket: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What one SQS message carries: object events, and the records ignored on purpose."""

    events: tuple[ObjectEvent, ...]
    is_test_event: bool = False
    ignored: tuple[IgnoredEvent, ...] = ()


def parse_message(body: str | bytes) -> ParsedMessage:
    """Parse one SQS message body; raise MalformedMessage with the reason."""
    document = _load_json(body)
    if isinstance(document, dict) and document.get("Type") == "Notification":
        document = _load_json(_require_str(document, "Message", "SNS envelope"))
    return _parse_document(document)


def _parse_document(document: Any) -> ParsedMessage:
    if not isinstance(document, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(document).__name__}")
    if document.get("Event") == TEST_EVENT:
        bucket = document.get("Bucket")
        ignored = IgnoredEvent(TEST_EVENT, bucket if isinstance(bucket, str) else None)
        return ParsedMessage(events=(), is_test_event=True, ignored=(ignored,))
    if "Records" in document:
        records = document["Records"]
        if not isinstance(records, list) or not records:
            raise MalformedMessage("'Records' is not a non-empty list")
        parsed = [_parse_record(r, i) for i, r in enumerate(records)]
        return ParsedMessage(
            events=tuple(p for p in parsed if isinstance(p, ObjectEvent)),
            ignored=tuple(p for p in parsed if isinstance(p, IgnoredEvent)),
        )
    if document.get("source") == "aws.s3" and "detail" in document:
        found = _parse_eventbridge(document)
        if isinstance(found, IgnoredEvent):
            return ParsedMessage(events=(), ignored=(found,))
        return ParsedMessage(events=(found,))
    raise MalformedMessage("not an S3 notification, SNS envelope, EventBridge or test event")


def _parse_record(record: Any, index: int) -> ObjectEvent | IgnoredEvent:
    where = f"Records[{index}]"
    if not isinstance(record, dict):
        raise MalformedMessage(f"{where} is not an object")
    name = _require_str(record, "eventName", where)
    kind = event_kind(name)
    if kind is None:
        return _ignored_record(name, record)
    s3 = _require_dict(record, "s3", where)
    bucket = _require_str(_require_dict(s3, "bucket", where + ".s3"), "name", where + ".s3.bucket")
    obj = _require_dict(s3, "object", where + ".s3")
    key = decode_notification_key(_require_str(obj, "key", where + ".s3.object"))
    # The sequencer orders PUTs and DELETEs of a key (notification-content-structure.html);
    # a restore's would place an old version after newer ones, so it is not kept.
    sequencer = None if is_restore_completed(name) else obj.get("sequencer")
    return ObjectEvent(
        kind=kind,
        bucket=bucket,
        key=_checked_key(key, where),
        event_name=name,
        event_time=_parse_time(record.get("eventTime"), where + ".eventTime"),
        version_id=_optional_str(obj, "versionId", where),
        etag=_optional_str(obj, "eTag", where),
        size=_optional_size(obj.get("size"), where),
        sequencer=_optional_sequencer(sequencer, where),
        delete_marker=name.endswith("DeleteMarkerCreated"),
    )


def _ignored_record(name: str, record: dict[str, Any]) -> IgnoredEvent:
    """Where an ignored record happened, as far as it says (its shape is not checked)."""
    s3 = record.get("s3")
    s3 = s3 if isinstance(s3, dict) else {}
    key = _nested_str(s3, "object", "key")
    if key is not None:
        with contextlib.suppress(MalformedMessage):  # else kept as sent: it is only logged
            key = decode_notification_key(key)
    return IgnoredEvent(name, _nested_str(s3, "bucket", "name"), key)


def _nested_str(parent: dict[str, Any], name: str, field: str) -> str | None:
    child = parent.get(name)
    value = child.get(field) if isinstance(child, dict) else None
    return value if isinstance(value, str) else None


def _parse_eventbridge(document: dict[str, Any]) -> ObjectEvent | IgnoredEvent:
    """EventBridge's detail-types (EventBridge.html, ev-events.html in the S3 user guide)."""
    detail_type = document.get("detail-type")
    detail = _require_dict(document, "detail", "EventBridge event")
    deletion_type = detail.get("deletion-type", "")
    marker = deletion_type == "Delete Marker Created"
    if detail_type == "Object Created":
        kind, name = EventKind.CREATED, "ObjectCreated:" + str(detail.get("reason", "PutObject"))
    elif detail_type == "Object Deleted" and detail.get("reason") == "Lifecycle Expiration":
        suffix = "DeleteMarkerCreated" if marker else "Delete"
        kind, name = EventKind.REMOVED, "LifecycleExpiration:" + suffix  # the S3 names
    elif detail_type == "Object Deleted":
        kind, name = EventKind.REMOVED, "ObjectRemoved:" + str(detail.get("reason", "DeleteObject"))
    elif detail_type == "Object Restore Completed":
        kind, name = EventKind.CREATED, RESTORE_COMPLETED
    else:  # Object Restore Initiated/Expired, Object Tags Added, Object ACL Updated, ...
        return IgnoredEvent(
            str(detail_type),
            _nested_str(detail, "bucket", "name"),
            _nested_str(detail, "object", "key"),
        )
    obj = _require_dict(detail, "object", "detail")
    bucket = _require_str(_require_dict(detail, "bucket", "detail"), "name", "detail.bucket")
    sequencer = None if is_restore_completed(name) else obj.get("sequencer")
    return ObjectEvent(
        kind=kind,
        bucket=bucket,
        key=_checked_key(_require_str(obj, "key", "detail.object"), "detail.object"),
        event_name=name,
        event_time=_parse_time(document.get("time"), "time"),
        version_id=_optional_str(obj, "version-id", "detail.object"),
        etag=_optional_str(obj, "etag", "detail.object"),
        size=_optional_size(obj.get("size"), "detail.object"),
        sequencer=_optional_sequencer(sequencer, "detail.object"),
        delete_marker=marker,
    )


def decode_notification_key(raw: str) -> str:
    """S3 notification keys are form-encoded: ``+`` is a space, ``%XX`` UTF-8 bytes."""
    try:
        return unquote_plus(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise MalformedMessage(
            f"object key {raw[:80]!r} is not valid percent-encoded UTF-8"
        ) from None


def _checked_key(key: str, where: str) -> str:
    if not key:
        raise MalformedMessage(f"{where}: empty object key")
    if "\x00" in key:
        raise MalformedMessage(f"{where}: object key contains NUL")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        raise MalformedMessage(f"{where}: object key is not valid UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise MalformedMessage(f"{where}: object key longer than {MAX_KEY_BYTES} bytes")
    return key


def _load_json(body: str | bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, TypeError) as exc:
        raise MalformedMessage(f"body is not JSON ({exc})") from None
    except RecursionError:  # "[[[[…" nested deeper than the parser goes
        raise MalformedMessage("body is JSON nested too deeply") from None


def _require_dict(parent: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise MalformedMessage(f"{where}.{name} is missing or not an object")
    return value


def _require_str(parent: dict[str, Any], name: str, where: str) -> str:
    value = parent.get(name)
    if not isinstance(value, str):
        raise MalformedMessage(f"{where}.{name} is missing or not a string")
    return value


def _optional_str(parent: dict[str, Any], name: str, where: str) -> str | None:
    value = parent.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedMessage(f"{where}.{name} is not a string")
    return value


def _optional_size(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedMessage(f"{where}.size is not a number")
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise MalformedMessage(f"{where}.size is not a number")  # int() takes "1_0", " 1"
    size = int(value)
    if size < 0:
        raise MalformedMessage(f"{where}.size is negative")
    return size


def _optional_sequencer(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if (
        not isinstance(value, str)
        or len(value) > SEQUENCER_WIDTH
        or not all(c in HEX_DIGITS for c in value)  # int(v, 16) takes "0x1F", "-1", "1_F"
    ):
        raise MalformedMessage(f"{where}.sequencer is not a hex string")
    return value


def parse_time(text: str) -> datetime:
    """ISO-8601 (``2026-11-23T10:00:00Z``, ``2026-11-23 10:00``) in UTC; naive means UTC.

    The one parser for event times, the times records store and those operators type;
    ValueError for anything else, including times outside years 1-9999 once in UTC.
    """
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text[:64]!r} is outside the years 1-9999 in UTC") from None


def _parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise MalformedMessage(f"{where} is missing or not a string")
    try:
        return parse_time(value)
    except ValueError:
        raise MalformedMessage(f"{where} {value[:64]!r} is not an ISO-8601 time") from None
