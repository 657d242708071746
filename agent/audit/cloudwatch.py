"""The audit trail in CloudWatch Logs: sent in PutLogEvents batches, read back by filter.

PutLogEvents limits (CloudWatch Logs API reference, PutLogEvents): at most 10,000 events
and 1,048,576 bytes a batch (each event's UTF-8 message plus 26 bytes), events in
chronological order, one batch spanning at most 24 hours, an event at most 256 KB (1 MB
since 2025; the smaller, older figure is kept). Sequence tokens are ignored now, so
processes may write the same stream at once. Events older than 14 days are rejected: a
trail that could not ship for longer keeps those records on the volume only (logged).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from agent import json_text
from agent.audit.records import AuditRecord, parse_record
from agent.aws import error_code

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_logs.type_defs import InputLogEventTypeDef

log = structlog.get_logger("agent.audit")

MAX_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024
MAX_SPAN = timedelta(hours=24)


# Metric filters bootstrap puts on the log group: CloudWatch counts the records itself, so
# the dashboard's restores and shares per day need nothing from the process that did them.
METRIC_FILTERS: dict[str, tuple[str, str]] = {
    # filter name: (metric name, filter pattern)
    "backup-agent-restores": (
        "AuditRestores",
        '{ $.action = "restore" || $.action = "restore-s3" }',
    ),
    "backup-agent-shares": ("AuditShares", '{ $.action = "share" }'),
    "backup-agent-removals": ("AuditRemovals", '{ $.action = "retention" || $.action = "gc" }'),
}


def message_of(record: AuditRecord) -> str:
    """The event's text: the record's JSON, without its key list when that is too big."""
    document = record.to_dict()
    text = json_text.dumps(document, separators=(",", ":"))
    if len(text.encode()) + EVENT_OVERHEAD > MAX_EVENT_BYTES:
        document["keys"] = []
        document["details"] = {**record.details, "keys_left_out": True}
        text = json_text.dumps(document, separators=(",", ":"))
    return text


def batches(records: list[AuditRecord]) -> Iterator[list[InputLogEventTypeDef]]:
    """Chronological batches within every PutLogEvents limit."""
    batch: list[InputLogEventTypeDef] = []
    size = 0
    first: datetime | None = None
    for record in sorted(records, key=lambda r: r.at):
        message = message_of(record)
        cost = len(message.encode()) + EVENT_OVERHEAD
        full = len(batch) >= MAX_EVENTS or size + cost > MAX_BATCH_BYTES
        if batch and (full or (first is not None and record.at - first > MAX_SPAN)):
            yield batch
            batch, size, first = [], 0, None
        if first is None:
            first = record.at
        batch.append({"timestamp": int(record.at.timestamp() * 1000), "message": message})
        size += cost
    if batch:
        yield batch


class LogsShipper:
    """Ships to one stream (this host's) of the audit log group bootstrap created."""

    def __init__(self, logs: CloudWatchLogsClient, group: str, stream: str) -> None:
        self.logs = logs
        self.group = group
        self.stream = stream
        self._stream_ready = False

    def ship(self, records: list[AuditRecord]) -> None:
        self._ensure_stream()
        for batch in batches(records):
            response = self.logs.put_log_events(
                logGroupName=self.group, logStreamName=self.stream, logEvents=batch
            )
            rejected = response.get("rejectedLogEventsInfo")
            if rejected:
                log.warning("audit.events_rejected", group=self.group, rejected=dict(rejected))

    def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        try:
            self.logs.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ResourceAlreadyExistsException":
                raise
        self._stream_ready = True


def read_from_logs(
    logs: CloudWatchLogsClient, group: str, since: datetime | None = None
) -> list[AuditRecord]:
    """Every record in the group (any host's stream) since `since`, oldest first, once each."""
    kwargs: dict[str, Any] = {"logGroupName": group}
    if since is not None:
        kwargs["startTime"] = int(since.timestamp() * 1000)
    seen: dict[str, AuditRecord] = {}
    for page in logs.get_paginator("filter_log_events").paginate(**kwargs):
        for event in page.get("events", []):
            try:
                data = json.loads(event.get("message", ""))
            except ValueError:
                continue
            record = parse_record(data)
            if record is not None and (since is None or record.at >= since):
                seen.setdefault(record.id, record)
    return sorted(seen.values(), key=lambda r: r.at)
