"""Scrub: a flipped byte is found, the copy quarantined and fetched again from S3."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from agent.config import ScrubConfig
from agent.errors import IntegrityError
from agent.lifecycle.gc import TRASH_DIR
from agent.lifecycle.scrub import QUARANTINE_DIR, Scrubber
from agent.storage.journal import Journal
from agent.storage.volume import Volume
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


# -- beside garbage collection (scrub takes no gc lock) -----------------------------------------


def test_an_orphan_gc_removes_between_the_listing_and_the_read_is_not_reported(
    aws, config, volume, monkeypatch
):
    from agent.runtime.wiring import compression_settings

    orphan = volume.write_copy([b"no version names me" * 100], compression_settings(config))
    real_verify = Volume.verify_copy

    def gc_removes_it_first(self, sha, *args, **kwargs):
        os.unlink(self.copy_path(sha))  # gc's rename and unlink, after scrub's stat
        return real_verify(self, sha, *args, **kwargs)

    monkeypatch.setattr(Volume, "verify_copy", gc_removes_it_first)
    alerts: list = []
    report = scrubber(aws, config, volume, alerts, share_per_run=1.0).run_once()

    assert (report.checked, report.corrupt, report.unrecoverable) == (1, 0, 0)
    assert alerts == [] and not volume.has_copy(orphan.sha256)
    assert list(Journal(volume.journal_dir).read_notes("scrub")) == []


def test_a_copy_gc_takes_mid_check_and_puts_back_stays_in_place(aws, config, volume, monkeypatch):
    """gc moved the copy to its trash as scrub opened it, then put it back (a backup used it):
    the copy scrub could not read is intact, and must not be quarantined."""
    body = os.urandom(3000)
    sha = back_up(aws, config, volume, {"docs/kept.bin": body})["docs/kept.bin"]
    trash = volume.root / TRASH_DIR
    trash.mkdir()
    real_verify = Volume.verify_copy

    def gc_takes_it_and_puts_it_back(self, sha, *args, **kwargs):
        os.rename(self.copy_path(sha), trash / self.copy_path(sha).name)
        try:
            return real_verify(self, sha, *args, **kwargs)
        finally:
            os.rename(trash / self.copy_path(sha).name, self.copy_path(sha))

    monkeypatch.setattr(Volume, "verify_copy", gc_takes_it_and_puts_it_back)
    alerts: list = []
    report = scrubber(aws, config, volume, alerts, share_per_run=1.0).run_once()
    monkeypatch.undo()

    assert (report.corrupt, report.healed, report.unrecoverable) == (0, 0, 0)
    assert alerts == [] and not (volume.root / QUARANTINE_DIR).exists()
    volume.verify_copy(sha, len(body))


def test_a_bad_copy_replaced_by_a_fresh_one_during_the_check_is_not_quarantined(
    aws, config, volume, monkeypatch
):
    """The copy read was bad, but by the verdict gc had removed it and a backup written the
    same bytes afresh: the fresh copy is not the one found bad (a later run checks it)."""
    from agent.runtime.wiring import compression_settings

    body = os.urandom(3000)
    sha = back_up(aws, config, volume, {"docs/rot.bin": body})["docs/rot.bin"]
    flip_a_byte(volume, sha)
    real_verify = Volume.verify_copy

    def replaced_while_read(self, sha, *args, **kwargs):
        try:
            return real_verify(self, sha, *args, **kwargs)
        finally:
            os.unlink(self.copy_path(sha))  # gc removed the bad one, a backup wrote afresh
            self.write_copy([body], compression_settings(config))

    monkeypatch.setattr(Volume, "verify_copy", replaced_while_read)
    alerts: list = []
    with capture_logs() as logs:
        report = scrubber(aws, config, volume, alerts, share_per_run=1.0).run_once()
    monkeypatch.undo()

    assert (report.corrupt, report.healed, report.unrecoverable) == (0, 0, 0)
    assert alerts == [] and not (volume.root / QUARANTINE_DIR).exists()
    volume.verify_copy(sha, len(body))
    [skipped] = [e for e in logs if e["event"] == "scrub.skipped"]
    assert skipped["sha256"] == sha and "replaced" in skipped["reason"]
