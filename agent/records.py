"""The version record: one per (bucket, key, version), in DynamoDB and in the volume journal."""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from agent import order
from agent.events import MAX_KEY_BYTES, ObjectEvent
from agent.events import parse_time as parse_time  # re-exported: records are read with it

_MARKER_EVENTS = ("DeleteMarkerCreated", "ReconcileDeleteMarker")


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A backed-up version of an object, or a tombstone (`deleted`) for a delete event."""

    bucket: str
    key: str
    version_token: str
    order_key: str
    event_name: str
    event_time: str
    backup_time: str
    volume_id: str
    deleted: bool = False
    delete_marker: bool = False
    version_id: str | None = None
    sequencer: str | None = None
    etag: str | None = None
    sha256: str | None = None
    size: int | None = None
    stored_size: int | None = None
    # Set when S3 holds the version but would not serve its bytes ("archived": GLACIER,
    # DEEP_ARCHIVE, Intelligent-Tiering archive tiers; "sse-c": a customer-provided key):
    # nothing stored, version_token "<unreadable>:<token>". Absent from older items.
    unreadable: str | None = None
    storage_class: str | None = None
    # What S3 holds besides the bytes (`OBJECT_ATTRIBUTES`), put back by restore --to-s3.
    # Absent (None) from older records; metadata/tags {} = recorded, none; tags None also
    # when not read (storage.record_tags off, or GetObjectTagging denied).
    content_type: str | None = None
    content_encoding: str | None = None
    content_language: str | None = None
    content_disposition: str | None = None
    cache_control: str | None = None
    expires: str | None = None  # the HTTP-date S3 sent (Expires header), e.g. "Tue, 01 Jan…"
    metadata: dict[str, str] | None = field(default=None, hash=False)  # x-amz-meta-*
    tags: dict[str, str] | None = field(default=None, hash=False)
    # The `categories:` rule that named it at backup (agent/categories.py); None: no rule
    # matched, or recorded before categories.
    category: str | None = None
    # Every replica group's holder, in the ledger only (docs/fleet.md "Replicas"): queue
    # name -> the volume holding the copy for that group. `volume_id` stays the first
    # holder (older readers use it); None: no replicas, or an item of an older release.
    # Not part of a record's identity: two reads of one version compare equal as it grows.
    holders: dict[str, str] | None = field(default=None, hash=False, compare=False)

    @classmethod
    def for_event(
        cls,
        event: ObjectEvent,
        *,
        backup_time: datetime,
        volume_id: str,
        order_key: str | None = None,
        **copy: Any,
    ) -> VersionRecord:
        """The record of `event`: a stored copy (`copy` given) or a tombstone. `order_key`
        replaces the event's own (reconcile places listed versions by the listing)."""
        deleted = not copy
        token = event.version_token
        if deleted:
            # A permanent delete of version X and the delete marker X are two records.
            token = ("rm:" if _removes_one_version(event) else "del:") + token
        return cls(
            bucket=event.bucket,
            key=event.key,
            version_token=token,
            order_key=order_key or event.order_key,
            event_name=event.event_name,
            event_time=event.event_time.isoformat(),
            backup_time=backup_time.isoformat(),
            volume_id=volume_id,
            deleted=deleted,
            delete_marker=event.delete_marker,
            version_id=event.version_id,
            sequencer=event.sequencer,
            etag=event.etag,
            **copy,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionRecord:
        """The record `data` holds; ValueError naming the problem when it holds none
        (`validated` is the same without the exception)."""
        record = validated(data)
        if isinstance(record, str):
            raise ValueError(record)
        return record

    def holder_volumes(self) -> list[str]:
        """Every volume that holds this record's copy: `volume_id` first, then each replica
        group's, once each."""
        found = [self.volume_id] if self.volume_id else []
        for volume in (self.holders or {}).values():
            if volume not in found:
                found.append(volume)
        return found

    def holder_in(self, group: str | None) -> str | None:
        """The volume that holds the copy for replica group `group`. Without replicas
        (`group` None) it is `volume_id`; a record of an older release (no `holders`)
        names no group, so it holds none for one."""
        if group is None:
            return self.volume_id
        return (self.holders or {}).get(group)

    @property
    def removes_one_version(self) -> bool:
        """A permanent delete of one S3 version or marker (``ObjectRemoved:Delete`` with a
        versionId): not a version itself; that version stops existing, the others stay.
        Older releases gave it the token ``del:<token>``, today's ``rm:<token>``."""
        return (
            self.deleted
            and not self.delete_marker
            and self.version_id is not None
            and self.version_id != "null"
        )


# -- records read back: untrusted ---------------------------------------------------------
# The journal lives on a volume that may have been tampered with (or cut by a crash), and
# DynamoDB items may have been written by hand or by another tool. Every record read back
# passes `validated` into the one typed shape, or is rejected with a reason: the reader
# skips it, counts it and names it (`Rejection`), and the rest carries on.

MAX_SIZE = 1 << 46  # 64 TiB: above S3's largest object (50 TB) and its compressed copy
MAX_TEXT = 4096  # an event name, version id, eTag, token …: far below, a bound all the same
_REQUIRED = ("bucket", "key", "version_token", "event_name", "event_time", "backup_time")
_TEXTS = (
    "volume_id",
    "order_key",
    "version_id",
    "sequencer",
    "etag",
    "unreadable",
    "storage_class",
)
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")  # S3's names, and older regions' looser ones
_GROUP = re.compile(r"[A-Za-z0-9_-]{1,80}")  # a replica group is an SQS queue's name
MAX_HOLDERS = 32  # replica groups of one version: fleet.replicas is at most 10
_SHA256 = re.compile(r"[0-9a-f]{64}")


def validated(data: Any) -> VersionRecord | str:
    """The record `data` (a journal line's or a DynamoDB item's fields) holds, checked
    field by field, or the reason it is none: a missing field, a wrong type, a NUL or an
    over-long key, a size out of range, a digest that is not one, an unparsable time.
    Fields of older releases are read as they meant (`order_key`, `delete_marker`); unknown
    fields are ignored; object attributes that do not pass are dropped, not the record."""
    if not isinstance(data, Mapping):
        return f"not an object: {type(data).__name__}"
    try:
        return _validated(data)
    except _Bad as bad:
        return str(bad)


class _Bad(Exception):
    pass


@functools.cache
def _record_fields() -> frozenset[str]:
    """VersionRecord's field names, once (`dataclasses.fields` per record was a fifth of a
    journal replay's validation: issue 19, docs/benchmarks.md)."""
    return frozenset(f.name for f in dataclasses.fields(VersionRecord))


_TEXT_FIELDS = (*_REQUIRED, *_TEXTS)


def _validated(data: Mapping[str, Any]) -> VersionRecord:
    """Each check below in the order of the reasons it gives. The common case (plain
    strings, whole numbers, no object attributes) is tested inline; the helpers that name
    a problem run only when that test fails: 26 -> 18 us a record under load, a journal
    replay's cost (issue 19). tests/unit/test_records_validated.py compares it with the
    previous form (tests/support/records_reference.py) on random and mutated records."""
    names = _record_fields()
    values: dict[str, Any] = {k: v for k, v in data.items() if k in names}
    get = values.get
    for name in _REQUIRED:
        if get(name) is None:
            raise _Bad(f"{name} is missing")
    for name in _TEXT_FIELDS:
        value = get(name)
        if value is not None and (
            value.__class__ is not str or "\x00" in value or len(value) > MAX_TEXT
        ):
            _check_text(name, value)  # raises with the reason (a str subclass, a long key pass)
    if not _BUCKET.fullmatch(values["bucket"]):
        raise _Bad("bucket is not a bucket name")
    key = values["key"]
    # at most 4 UTF-8 bytes a character (3 for a lone surrogate): short keys need no encode
    if not key or (
        len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
    ):
        raise _Bad(f"key is empty or longer than {MAX_KEY_BYTES} bytes")
    values.setdefault("volume_id", "")
    for name in ("size", "stored_size"):
        value = get(name)
        if value.__class__ is not int or not 0 <= value <= MAX_SIZE:
            values[name] = _size(name, value)
    for name in ("deleted", "delete_marker"):
        if get(name, False).__class__ is not bool:  # bool has no subclasses
            raise _Bad(f"{name} is not true or false")
    sha = get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise _Bad("sha256 is not a SHA-256 hex digest")
    try:
        event_time = parse_time(values["event_time"])
    except (ValueError, OverflowError):
        raise _Bad("event_time is not an ISO-8601 time") from None
    try:
        parse_time(values["backup_time"])
    except (ValueError, OverflowError):
        raise _Bad("backup_time is not an ISO-8601 time") from None
    deleted = values["deleted"] = get("deleted", False)
    if sha is None and not deleted and get("unreadable") is None:
        # every version the agent keeps names its copy (a deletion or a version S3 would not
        # serve has none): a damaged field name ("sha246") made the record one with no copy,
        # and gc freed the copy it named (the lifecycle review, 2026-12-02)
        raise _Bad("sha256 is missing from a version that has content")
    if "delete_marker" not in values:  # written before records said: the event's name
        values["delete_marker"] = deleted and values["event_name"].endswith(_MARKER_EVENTS)
    # records of older releases: the order key of today
    values["order_key"] = order.migrated(get("order_key"), event_time, get("sequencer"))
    holders = get("holders")
    if holders is not None:
        values["holders"] = _holders(holders)
    if not _ATTRIBUTE_FIELDS.isdisjoint(values):  # else each is None, the field's default
        values.update(checked_attributes(values, "record"))
    category = get("category")  # a name, not worth refusing the record for
    if category is not None and (not isinstance(category, str) or len(category) > 64):
        values["category"] = None
    return VersionRecord(**values)


def _check_text(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _Bad(f"{name} is not a string: {type(value).__name__}")
    if "\x00" in value:
        raise _Bad(f"{name} holds a NUL")
    if name != "key" and len(value) > MAX_TEXT:
        raise _Bad(f"{name} is longer than {MAX_TEXT} characters")


def _holders(value: Any) -> dict[str, str] | None:
    """Replica group -> volume id; a malformed map refuses the record (it says where the
    copies are: a guess would send a restore to the wrong volume)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value or len(value) > MAX_HOLDERS:
        raise _Bad(f"holders is not a map of 1 to {MAX_HOLDERS} replica groups")
    for group, volume in value.items():
        if not isinstance(group, str) or not _GROUP.fullmatch(group):
            raise _Bad("holders names a replica group that is no queue name")
        if not isinstance(volume, str) or not volume:
            raise _Bad(f"holders[{group}] is not a volume id")
        _check_text(f"holders[{group}]", volume)
    return dict(value)


def _size(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)  # DynamoDB's numbers
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{name} is not a whole number")
    if not 0 <= value <= MAX_SIZE:
        raise _Bad(f"{name} {value} is out of range (0 to {MAX_SIZE})")
    return value


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record read back and not used: where it is, and why."""

    source: str  # "journal" or "dynamodb"
    where: str  # "2026-11-23.jsonl:17" (segment and line), or "<pk> <sk>" of an item
    reason: str
    sha256: str | None = None  # a well-formed digest it named: gc keeps that copy all the same
    # Digests its bytes may name, damaged as they are (a journal line's: agent/storage/
    # journal.py `digests_in`): gc keeps those copies too.
    raw_digests: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.source} {self.where}: {self.reason}"

    def digests(self) -> set[str]:
        """Every copy gc keeps for this record: the digest it named, those in its bytes."""
        return {self.sha256, *self.raw_digests} if self.sha256 else set(self.raw_digests)


def digest_named(data: Any) -> str | None:
    """The well-formed sha256 a rejected record names, if any (gc must not free it)."""
    sha = data.get("sha256") if isinstance(data, Mapping) else None
    return sha if isinstance(sha, str) and _SHA256.fullmatch(sha) else None


class Rejections:
    """Every record a reader skipped, each once (thread-safe). The first sighting is logged
    at error (``record.rejected``) and handed to `on_reject` (the daemon counts it)."""

    def __init__(self, on_reject: Callable[[Rejection], None] | None = None) -> None:
        self._seen: dict[tuple[str, str], Rejection] = {}
        self._lock = threading.Lock()
        self.on_reject = on_reject

    def add(self, rejection: Rejection) -> None:
        with self._lock:
            identity = (rejection.source, rejection.where)
            if identity in self._seen:
                return
            self._seen[identity] = rejection
        log.error(
            "record.rejected",
            source=rejection.source,
            where=rejection.where,
            reason=rejection.reason,
        )
        if self.on_reject is not None:
            self.on_reject(rejection)

    def all(self) -> list[Rejection]:
        with self._lock:
            return list(self._seen.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


def _removes_one_version(event: ObjectEvent) -> bool:
    return not event.delete_marker and event.version_id not in (None, "null")


# -- what S3 holds besides the bytes ---------------------------------------------------------
# GetObject answers with these headers and the x-amz-meta-* user metadata (boto3 `Metadata`);
# PutObject and CreateMultipartUpload take the same names
# (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html). Tags come from
# GetObjectTagging (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObjectTagging.html).

CONTENT_HEADERS = {  # record field -> the boto3 parameter of GetObject / PutObject
    "content_type": "ContentType",
    "content_encoding": "ContentEncoding",
    "content_language": "ContentLanguage",
    "content_disposition": "ContentDisposition",
    "cache_control": "CacheControl",
    "expires": "Expires",
}
OBJECT_ATTRIBUTES = (*CONTENT_HEADERS, "metadata", "tags")
_ATTRIBUTE_FIELDS = frozenset(OBJECT_ATTRIBUTES)
# S3's own limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html,
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-tagging.html): user metadata
# at most 2 KB, the UTF-8 bytes of every key and value summed; at most 10 tags per object,
# keys up to 128 and values up to 256 Unicode characters. A content header is bounded here
# (S3 bounds a PUT's headers to 8 KB in all).
METADATA_MAX_BYTES = 2048
MAX_TAGS = 10
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
HEADER_MAX_BYTES = 2048

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name's characters
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # would split or end a header line

log = structlog.get_logger("agent.records")


def attributes_of(response: Mapping[str, Any]) -> dict[str, Any]:
    """The record fields of a GetObject (or HeadObject) response: the content headers and
    the user metadata ({} when it has none), checked and bounded like a record read back."""
    values: dict[str, Any] = {
        name: response.get(parameter)
        for name, parameter in CONTENT_HEADERS.items()
        if name != "expires"
    }
    values["expires"] = response.get("ExpiresString") or _http_date(response.get("Expires"))
    values["metadata"] = response.get("Metadata") or {}
    return checked_attributes(values, "S3 response")


def tags_of(tag_set: Any) -> dict[str, str] | None:
    """GetObjectTagging's TagSet as {key: value}, checked like a record's `tags`."""
    tags: Any = tag_set
    if isinstance(tag_set, list) and all(isinstance(t, dict) for t in tag_set):
        tags = {t.get("Key"): t.get("Value") for t in tag_set}
    checked: dict[str, str] | None = checked_attributes({"tags": tags}, "S3 response")["tags"]
    return checked


def checked_attributes(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Every `OBJECT_ATTRIBUTES` field of `values`, None where absent or not acceptable: a
    wrong type, a control character, beyond S3's limits. A dropped value is logged (records
    on the volume and in DynamoDB are input like any other: never a crash)."""
    checked: dict[str, Any] = {}
    for name in OBJECT_ATTRIBUTES:
        value = values.get(name)
        problem = None if value is None else _problem(name, value)
        if problem is not None:
            log.warning(
                "record.attribute_dropped",
                field=name,
                problem=problem,
                source=source,
                bucket=values.get("bucket"),
                key=values.get("key"),
            )
            value = None
        checked[name] = (
            None if value is None else (dict(value) if isinstance(value, dict) else value)
        )
    return checked


def _problem(name: str, value: Any) -> str | None:
    if name == "metadata":
        return _map_problem(value, key_limit=None, value_limit=None, most=None) or (
            _metadata_size_problem(value)
        )
    if name == "tags":
        return _map_problem(value, key_limit=TAG_KEY_MAX, value_limit=TAG_VALUE_MAX, most=MAX_TAGS)
    if not isinstance(value, str):
        return f"not a string: {type(value).__name__}"
    if len(value.encode("utf-8", errors="surrogatepass")) > HEADER_MAX_BYTES:
        return f"longer than {HEADER_MAX_BYTES} bytes"
    if _CONTROL.search(value):
        return "holds a control character"
    if not _latin1(value):  # what HTTP carries in a header (S3 sends raw bytes as such)
        return "a character an HTTP header cannot carry"
    if name == "expires" and _parse_http_date(value) is None:
        return "not an HTTP date"
    return None


def _map_problem(
    value: Any, *, key_limit: int | None, value_limit: int | None, most: int | None
) -> str | None:
    if not isinstance(value, dict):
        return f"not a map: {type(value).__name__}"
    if most is not None and len(value) > most:
        return f"{len(value)} entries, more than {most}"
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            return "a key or value is not a string"
        if key_limit is None and not _TOKEN.fullmatch(key):
            return f"{key[:40]!r} is not a header name"
        if key_limit is None and not item.isascii():  # S3 sends others RFC 2047-encoded
            return "a value that is not ASCII"
        if key_limit is not None and not key:
            return "an empty key"
        if _CONTROL.search(key) or _CONTROL.search(item):
            return "holds a control character"
        if key_limit is not None and len(key) > key_limit:
            return f"a key longer than {key_limit} characters"
        if value_limit is not None and len(item) > value_limit:
            return f"a value longer than {value_limit} characters"
    return None


def _metadata_size_problem(metadata: dict[str, str]) -> str | None:
    size = metadata_size(metadata)
    return f"{size} bytes, more than {METADATA_MAX_BYTES}" if size > METADATA_MAX_BYTES else None


def metadata_size(metadata: Mapping[str, str]) -> int:
    """How S3 measures user metadata: the UTF-8 bytes of every key and value."""
    return sum(
        len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        for k, v in metadata.items()
    )


def expires_datetime(record: VersionRecord) -> datetime | None:
    """The record's Expires as a datetime (what boto3's PutObject takes)."""
    return _parse_http_date(record.expires) if record.expires else None


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _parse_http_date(text: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _http_date(value: Any) -> str | None:
    if not isinstance(value, datetime):
        return None
    return email.utils.format_datetime(value.astimezone(UTC), usegmt=True)
