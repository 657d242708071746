"""The audit trail's pieces without AWS: PutLogEvents batching, torn lines, records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from agent.audit import cloudwatch
from agent.audit.auditor import Auditor
from agent.audit.cloudwatch import EVENT_OVERHEAD, MAX_BATCH_BYTES, MAX_EVENTS, batches
from agent.audit.records import MAX_KEYS, Actor, AuditRecord, parse_record
from agent.audit.trail import AUDIT_DIR, AuditTrail

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
WHO = Actor(uid=1000, user="alice", aws_arn="arn:aws:iam::123456789012:user/alice")


def record(at: datetime, **fields) -> AuditRecord:
    return AuditRecord(at=at, who=WHO, action="verify", outcome="ok", **fields)


def test_batches_keep_every_put_log_events_limit(monkeypatch):
    many = [record(T0 + timedelta(seconds=i)) for i in range(MAX_EVENTS + 5)]
    found = list(batches(many))
    assert sum(len(b) for b in found) == len(many)
    for batch in found:  # ~300 bytes a record: the byte limit binds before the count
        assert len(batch) <= MAX_EVENTS
        assert sum(len(e["message"].encode()) + EVENT_OVERHEAD for e in batch) <= MAX_BATCH_BYTES
        assert [e["timestamp"] for e in batch] == sorted(e["timestamp"] for e in batch)
    monkeypatch.setattr(cloudwatch, "MAX_EVENTS", 4)
    assert [len(b) for b in batches(many[:10])] == [4, 4, 2]

    big = [record(T0, keys=tuple(f"s3://b/{'k' * 900}{n}" for n in range(100))) for _ in range(20)]
    for batch in batches(big):
        assert sum(len(e["message"].encode()) + EVENT_OVERHEAD for e in batch) <= MAX_BATCH_BYTES

    spread = [record(T0), record(T0 + timedelta(hours=23)), record(T0 + timedelta(hours=25))]
    assert [len(b) for b in batches(list(reversed(spread)))] == [2, 1]  # sorted, 24 h apart


def test_a_torn_or_foreign_line_is_skipped_and_the_next_record_kept(tmp_path):
    trail = AuditTrail.on_volume(tmp_path)
    trail.record(record(T0))
    segment = next((tmp_path / AUDIT_DIR).glob("*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'{"not": "a record"}\n{"id": "torn')
    trail.record(record(T0 + timedelta(minutes=1)))
    assert [r.at for r in trail.read()] == [T0, T0 + timedelta(minutes=1)]


def test_a_record_round_trips_and_refuses_unknown_actions():
    original = record(T0, keys=("s3://b/k",), versions=("v1",), details={"expires_at": "x"})
    assert parse_record(json.loads(json.dumps(original.to_dict()))) == original
    with pytest.raises(ValueError, match="unknown audit action"):
        AuditRecord(at=T0, who=WHO, action="format-disk", outcome="ok")
    assert parse_record({"at": "2026-12-01T09:00:00"}) is None  # no zone, no id: not a record


class Collected:
    def __init__(self) -> None:
        self.shipped: list[AuditRecord] = []

    def ship(self, records: list[AuditRecord]) -> None:
        self.shipped.extend(records)


def test_a_record_the_volume_refuses_is_still_shipped(tmp_path):
    (tmp_path / AUDIT_DIR).write_text("a file where the directory should be")
    shipper = Collected()
    trail = AuditTrail.on_volume(tmp_path, shipper=shipper)
    trail.record(record(T0))
    assert [r.at for r in shipper.shipped] == [T0]
    with pytest.raises(OSError):
        AuditTrail.on_volume(tmp_path).record(record(T0))  # nowhere to keep it: said loudly


def test_around_records_a_raised_attempt_with_what_it_was_asked_and_raises_it(tmp_path):
    trail = AuditTrail.on_volume(tmp_path)
    auditor = Auditor(trail, lambda: WHO, clock=lambda: T0)
    keys = [f"s3://b/k{i}" for i in range(MAX_KEYS + 5)]

    def run() -> None:
        raise PermissionError("AccessDenied")

    with pytest.raises(PermissionError):
        auditor.around("share", run, lambda *_: pytest.fail("no result to build"), keys=keys)

    [record] = trail.read()
    assert (record.action, record.outcome, record.at, record.who) == ("share", "failed", T0, WHO)
    assert record.keys == tuple(keys[:MAX_KEYS]) and record.keys_total == MAX_KEYS + 5
    assert record.details == {
        "error": "PermissionError: AccessDenied",
        "error_class": "PermissionError",
    }
