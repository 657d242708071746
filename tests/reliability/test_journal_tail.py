"""A journal line torn by a crash or a full disk must not swallow the next record.

`os.write` can stop half-way (ENOSPC, power loss). The next append must start on a line of
its own; otherwise the torn bytes and the new record form one unparseable line and
`read_all` silently skips a version that the ledger knows about.
"""

from __future__ import annotations

import errno
from datetime import UTC, datetime

import pytest

from agent.records import VersionRecord
from agent.storage import journal as journal_module
from agent.storage.journal import Journal

NOW = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)


def _record(key: str) -> VersionRecord:
    return VersionRecord(
        bucket="company-documents",
        key=key,
        version_token="v:" + key,
        order_key="s0001",
        event_name="ObjectCreated:Put",
        event_time=NOW.isoformat(),
        backup_time=NOW.isoformat(),
        volume_id="vol-test",
        sha256="a" * 64,
        size=1,
    )


def test_a_record_appended_after_a_torn_line_is_kept(tmp_path):
    journal = Journal(tmp_path, clock=lambda: NOW)
    journal.append(_record("before.txt"))
    segment = next(tmp_path.glob("*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'{"bucket":"company-documents","key":"torn')  # a crash mid-write

    journal.append(_record("after.txt"))

    assert [r.key for r in journal.read_all()] == ["before.txt", "after.txt"]


def test_a_full_disk_mid_line_does_not_cost_the_next_record(tmp_path, monkeypatch):
    journal = Journal(tmp_path, clock=lambda: NOW)
    journal.append(_record("before.txt"))
    real_write = journal_module.os.write
    calls = {"n": 0}

    def write_then_fill(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:20]))  # part of the line fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", write_then_fill)
    with pytest.raises(OSError):
        journal.append(_record("lost-to-enospc.txt"))
    monkeypatch.setattr(journal_module.os, "write", real_write)

    journal.append(_record("retried.txt"))  # the retry once space is back

    assert [r.key for r in journal.read_all()] == ["before.txt", "retried.txt"]
