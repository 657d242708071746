"""The journal/DynamoDB record validator as it was before issue 19's fast path (agent/records.py
at 3bb9032): the oracle tests/unit/test_records_validated.py compares today's `validated` with.
Kept as it was, helpers included, so that a change to agent/records.py cannot change both."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from agent import order
from agent.events import MAX_KEY_BYTES
from agent.records import (
    _BUCKET,
    _GROUP,
    _MARKER_EVENTS,
    _REQUIRED,
    _SHA256,
    _TEXTS,
    MAX_HOLDERS,
    MAX_SIZE,
    MAX_TEXT,
    VersionRecord,
    checked_attributes,
    parse_time,
)


class _Bad(Exception):
    pass


def validated(data: Any) -> VersionRecord | str:
    if not isinstance(data, Mapping):
        return f"not an object: {type(data).__name__}"
    try:
        return _validated(data)
    except _Bad as bad:
        return str(bad)


def _validated(data: Mapping[str, Any]) -> VersionRecord:
    names = frozenset(f.name for f in dataclasses.fields(VersionRecord))
    values: dict[str, Any] = {k: v for k, v in data.items() if k in names}
    for name in _REQUIRED:
        if values.get(name) is None:
            raise _Bad(f"{name} is missing")
    for name in (*_REQUIRED, *_TEXTS):
        _check_text(name, values.get(name))
    if not _BUCKET.fullmatch(values["bucket"]):
        raise _Bad("bucket is not a bucket name")
    key = values["key"]
    if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _Bad(f"key is empty or longer than {MAX_KEY_BYTES} bytes")
    values.setdefault("volume_id", "")
    for name in ("size", "stored_size"):
        values[name] = _size(name, values.get(name))
    for name in ("deleted", "delete_marker"):
        if not isinstance(values.get(name, False), bool):
            raise _Bad(f"{name} is not true or false")
    sha = values.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise _Bad("sha256 is not a SHA-256 hex digest")
    times = {}
    for name in ("event_time", "backup_time"):
        try:
            times[name] = parse_time(values[name])
        except (ValueError, OverflowError):
            raise _Bad(f"{name} is not an ISO-8601 time") from None
    values["deleted"] = values.get("deleted", False)
    if sha is None and not values["deleted"] and values.get("unreadable") is None:
        raise _Bad("sha256 is missing from a version that has content")
    if "delete_marker" not in values:
        values["delete_marker"] = values["deleted"] and values["event_name"].endswith(
            _MARKER_EVENTS
        )
    values["order_key"] = order.migrated(
        values.get("order_key"), times["event_time"], values.get("sequencer")
    )
    values["holders"] = _holders(values.get("holders"))
    values.update(checked_attributes(values, "record"))
    category = values.get("category")
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
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{name} is not a whole number")
    if not 0 <= value <= MAX_SIZE:
        raise _Bad(f"{name} {value} is out of range (0 to {MAX_SIZE})")
    return value
