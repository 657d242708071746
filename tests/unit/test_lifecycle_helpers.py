"""Small lifecycle pieces: durations, the rate limiter, state files, journal expiry replay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.errors import ConfigError, VolumeNotReady
from agent.lifecycle.context import STATE_DIR, JobBusy, Pacer, StateFile, job_lock
from agent.records import VersionRecord
from agent.schedule import parse_duration
from agent.storage.journal import Journal
from agent.storage.volume import MARKER_NAME
from tests.support.aws import make_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), (45, 45)],
)
def test_durations_parse(text, expected):
    assert parse_duration(text) == timedelta(seconds=expected)


def test_compound_durations_parse_as_snapshot_intervals_do():
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("1d 12H") == timedelta(hours=36)
    for bad in ("", "1y", "h", "1h soon", "-1h"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_lifecycle_sections_are_optional_and_validated(tmp_path):
    config = make_config(tmp_path)
    assert config.retention.keep_last_versions is None
    assert config.gc.grace_period == timedelta(hours=24)
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, gc={"grace_period": "soon"}, scrub={"share_per_run": 2})
    assert any(p.startswith("gc.grace_period:") for p in error.value.problems)
    assert any(p.startswith("scrub.share_per_run:") for p in error.value.problems)


class SteppingClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_acquisitions_evenly():
    clock = SteppingClock()
    limiter = Pacer(4, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        limiter.acquire()
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]
    clock.now += 10  # idle time is not saved up as a burst
    limiter.acquire()
    limiter.acquire()
    assert clock.slept[-1] == 0.25 and len(clock.slept) == 5


def test_state_file_round_trip_and_garbage_tolerated(volume):
    state = StateFile(volume, "thing.json")
    assert state.load() is None
    state.save({"after": "a/b"})
    assert state.load() == {"after": "a/b"}
    state.path.write_text("{not json")
    assert state.load() is None


def test_job_lock_refuses_a_second_run(volume):
    with job_lock(volume, "gc"), pytest.raises(JobBusy), job_lock(volume, "gc"):
        pass
    with job_lock(volume, "gc"):  # released after the first
        pass


def record(token: str, sha: str = "a" * 64) -> VersionRecord:
    return VersionRecord(
        bucket="b",
        key="k",
        version_token=token,
        order_key="t" + token,
        event_name="ObjectCreated:Put",
        event_time="2026-01-01T00:00:00+00:00",
        backup_time="2026-01-01T00:00:00+00:00",
        volume_id="vol",
        sha256=sha,
    )


def test_journal_replay_forgets_expired_versions_and_skips_notes(tmp_path):
    journal = Journal(tmp_path)
    journal.append(record("v:1"))
    journal.append(record("v:2"))
    journal.append_note("expired", {**record("v:1").to_dict(), "expired_at": "x"})
    journal.append_note("scrub", {"outcome": "healed", "sha256": "a" * 64})
    assert [r.version_token for r in journal.read_all()] == ["v:2"]
    journal.append(record("v:1"))  # backed up again after expiry: live again
    assert sorted(r.version_token for r in journal.read_all()) == ["v:1", "v:2"]
    assert [n["outcome"] for n in journal.read_notes("scrub")] == ["healed"]


def test_journal_read_since_returns_only_later_lines(tmp_path):
    journal = Journal(tmp_path)
    journal.append(record("v:1"))
    position = journal.position()
    journal.append(record("v:2"))
    assert [line["version_token"] for line in journal.read_since(position)] == ["v:2"]
    assert len(list(journal.read_since(None))) == 2


def test_job_lock_writes_nothing_on_an_unmounted_volume(volume):
    (volume.root / MARKER_NAME).unlink()  # what an unmounted mount point looks like

    with pytest.raises(VolumeNotReady), job_lock(volume, "gc"):
        pass

    assert not (volume.root / STATE_DIR).exists()
