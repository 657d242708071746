"""Scrub: a flipped byte is found, the copy quarantined and fetched again from S3."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from agent.config import ScrubConfig
from agent.errors import IntegrityError
from agent.lifecycle.scrub import QUARANTINE_DIR, Scrubber
from agent.storage.journal import Journal
from tests.support.lifecycle import created, enable_versioning, make_service, put


def back_up(aws, config, volume, objects: dict[str, bytes]) -> dict[str, str]:
    """Upload and back up each object; return key → sha256."""
    service = make_service(aws, config, volume)
    digests = {}
    for key, body in objects.items():
        response = put(aws, key, body)
        result = service.process(created(key, response, len(body), at=datetime.now(UTC)))
        digests[key] = result.copy.sha256
    return digests


def flip_a_byte(volume, sha: str) -> None:
    path = volume.copy_path(sha)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def scrubber(aws, config, volume, alerts=None, **settings) -> Scrubber:
    return Scrubber(
        volume=volume,
        journal=Journal(volume.journal_dir),
        service=make_service(aws, config, volume),
        settings=ScrubConfig(**settings),
        on_alert=(lambda event, details: alerts.append((event, details)))
        if alerts is not None
        else None,
    )


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_a_flipped_byte_is_found_quarantined_and_healed_from_s3(aws, config, volume, versioned):
    if versioned:
        enable_versioning(aws)
    objects = {f"docs/{i}.bin": os.urandom(3000) for i in range(3)}
    digests = back_up(aws, config, volume, objects)
    bad = digests["docs/1.bin"]
    flip_a_byte(volume, bad)
    with pytest.raises(IntegrityError):
        volume.verify_copy(bad)
    alerts: list = []

    with capture_logs() as logs:
        report = scrubber(aws, config, volume, alerts, share_per_run=1.0).run_once()

    assert (report.checked, report.corrupt, report.healed) == (3, 1, 1)
    volume.verify_copy(bad, 3000)
    with volume.open_copy(bad) as reader:
        assert reader.read() == objects["docs/1.bin"]
    quarantined = list((volume.root / QUARANTINE_DIR).iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [bad]
    assert [event for event, _ in alerts] == ["scrub.corrupt"]
    notes = list(Journal(volume.journal_dir).read_notes("scrub"))
    assert [(n["outcome"], n["sha256"], n["key"]) for n in notes] == [("healed", bad, "docs/1.bin")]
    assert any(e["event"] == "scrub.corrupt" and e["log_level"] == "error" for e in logs)


def test_a_bad_copy_whose_version_is_gone_from_s3_is_reported_unrecoverable(aws, config, volume):
    digests = back_up(aws, config, volume, {"note.txt": b"original" * 100})
    put(aws, "note.txt", b"overwritten")  # unversioned: the backed-up bytes are gone
    flip_a_byte(volume, digests["note.txt"])
    alerts: list = []

    report = scrubber(aws, config, volume, alerts, share_per_run=1.0).run_once()

    assert (report.corrupt, report.healed, report.unrecoverable) == (1, 0, 1)
    assert [event for event, _ in alerts] == ["scrub.corrupt", "scrub.unrecoverable"]
    assert not volume.has_copy(digests["note.txt"])
    assert len(list((volume.root / QUARANTINE_DIR).iterdir())) == 1
    notes = list(Journal(volume.journal_dir).read_notes("scrub"))
    assert [n["outcome"] for n in notes] == ["unrecoverable"]


def test_each_run_checks_its_share_and_the_cursor_completes_a_cycle(aws, config, volume):
    back_up(aws, config, volume, {f"k{i}": f"body {i}".encode() for i in range(5)})
    runs = [scrubber(aws, config, volume, cycle_days=2).run_once() for _ in range(3)]
    assert [r.checked for r in runs] == [3, 2, 3]
    assert [r.cycle_completed for r in runs] == [False, True, False]
