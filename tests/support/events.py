"""The JSON event fixtures under tests/events/, and S3 notifications built in their shape."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

EVENTS_DIR = Path(__file__).parent.parent / "events"


def load_event(name: str) -> dict[str, Any]:
    """A fixture as a dict (a fresh copy each time, safe to modify)."""
    data: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))
    return data


def event_text(name: str) -> str:
    return (EVENTS_DIR / name).read_text(encoding="utf-8")


def s3_record(
    key: str,
    *,
    bucket: str = "company-documents",
    event_name: str = "ObjectCreated:Put",
    event_time: str = "2026-11-23T10:15:30.123Z",
    **obj: Any,
) -> dict[str, Any]:
    """One record shaped like s3-put.json; `key` is form-encoded as S3 does; `obj` replaces
    the object fields (size, eTag, versionId, sequencer; None drops one)."""
    record: dict[str, Any] = copy.deepcopy(load_event("s3-put.json")["Records"][0])
    record["eventName"] = event_name
    record["eventTime"] = event_time
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    fields = {"key": quote_plus(key, safe="/")}
    fields.update({name: value for name, value in obj.items() if value is not None})
    record["s3"]["object"] = fields
    return record


def notification(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})
