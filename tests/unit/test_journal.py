"""The volume journal: every recorded version as a fsynced JSON line, readable back whole."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.events import EventKind, ObjectEvent
from agent.records import VersionRecord
from agent.storage import journal as journal_module
from agent.storage.journal import Journal, JournalPosition, Note

T0 = datetime(2026, 11, 23, 23, 59, tzinfo=UTC)


def record(key: str, n: int = 1, *, deleted: bool = False) -> VersionRecord:
    event = ObjectEvent(
        kind=EventKind.REMOVED if deleted else EventKind.CREATED,
        bucket="company-documents",
        key=key,
        event_name="ObjectRemoved:Delete" if deleted else "ObjectCreated:Put",
        event_time=T0,
        version_id=f"v{n}",
        sequencer=f"{n:02X}",
    )
    if deleted:
        return VersionRecord.for_event(event, backup_time=T0, volume_id="vol-test")
    return VersionRecord.for_event(
        event, backup_time=T0, volume_id="vol-test", sha256="c" * 64, size=n, stored_size=n
    )


def test_appended_records_read_back_equal_and_in_order(tmp_path):
    journal = Journal(tmp_path)
    written = [record("a"), record("ünïcødé/✓ key", 2), record("a", 3, deleted=True)]
    for item in written:
        journal.append(item)
    assert list(Journal(tmp_path).read_all()) == written


def test_segments_are_daily_and_read_oldest_first(tmp_path):
    now = [T0]
    journal = Journal(tmp_path, clock=lambda: now[0])
    journal.append(record("day-one"))
    now[0] = datetime(2026, 11, 24, 0, 1, tzinfo=UTC)
    journal.append(record("day-two"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-11-23.jsonl", "2026-11-24.jsonl"]
    assert [r.key for r in journal.read_all()] == ["day-one", "day-two"]


def test_position_is_the_end_of_the_newest_segment(tmp_path):
    journal = Journal(tmp_path, clock=lambda: T0)
    assert journal.position() is None
    returned = journal.append(record("a"))
    assert (
        journal.position()
        == returned
        == JournalPosition("2026-11-23.jsonl", (tmp_path / "2026-11-23.jsonl").stat().st_size)
    )


def test_a_torn_last_line_from_a_crash_is_skipped(tmp_path):
    journal = Journal(tmp_path, clock=lambda: T0)
    journal.append(record("whole"))
    with (tmp_path / "2026-11-23.jsonl").open("ab") as segment:
        segment.write(b'{"bucket":"company-documents","key":"torn')
    assert [r.key for r in journal.read_all()] == ["whole"]


def test_a_missing_directory_reads_as_empty(tmp_path):
    assert list(Journal(tmp_path / "absent").read_all()) == []


def test_each_append_is_fsynced_and_a_new_segment_directory_entry_too(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    journal = Journal(tmp_path, clock=lambda: T0)
    journal.append(record("a"))
    journal.append(record("b"))
    segment = str(tmp_path / "2026-11-23.jsonl")
    assert synced == [segment, str(tmp_path), segment]


def test_an_order_note_gives_the_version_its_new_place_on_replay(tmp_path):
    journal = Journal(tmp_path)
    first = record("a")
    journal.append(first)
    journal.append_order(first, first.order_key + "+")
    assert [r.order_key for r in journal.read_all()] == [first.order_key + "+"]


def test_an_order_note_before_a_version_was_recorded_anew_does_not_apply(tmp_path):
    journal = Journal(tmp_path)
    first = record("a")
    journal.append(first)
    journal.append_order(first, first.order_key + "+")
    journal.append_note("expired", first.to_dict())
    journal.append(first)  # backed up again after it expired: a fresh record
    assert list(journal.read_all()) == [first]


def test_lines_of_the_previous_release_read_in_todays_order(tmp_path):
    """The previous release wrote "s<sequencer>" and "e<time>" keys (every "s" after every
    "e"); they are rebuilt from the line's own time and sequencer."""
    import json

    evented = {**record("a", 1).to_dict(), "order_key": "s" + "01".ljust(64, "0")}
    listed = {
        **record("a", 2).to_dict(),
        "event_time": "2026-11-24T00:00:05+00:00",
        "order_key": "e20261124T000005.000000Z",
    }
    del listed["sequencer"]
    segment = tmp_path / "2026-11-24.jsonl"
    segment.write_text("".join(json.dumps(line) + "\n" for line in (listed, evented)))
    read = list(Journal(tmp_path).read_all())
    assert sorted(read, key=lambda r: r.order_key)[-1].version_id == "v2"
    assert all(r.order_key.startswith("2:") for r in read)


def test_tombstones_written_before_records_said_whether_they_were_markers(tmp_path):
    """Lines without `delete_marker`: the event's name tells a marker from a permanent
    delete of one version (which is not a version of its own)."""
    import json

    marker = {
        **record("a", 1, deleted=True).to_dict(),
        "event_name": "ObjectRemoved:DeleteMarkerCreated",
    }
    removal = {**record("b", 2, deleted=True).to_dict(), "version_token": "del:v:v2"}
    for line in (marker, removal):
        del line["delete_marker"]
    (tmp_path / "2026-11-23.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in (marker, removal))
    )
    read = {r.key: r for r in Journal(tmp_path).read_all()}
    assert read["a"].delete_marker and not read["a"].removes_one_version
    assert read["b"].removes_one_version and not read["b"].delete_marker


def test_replay_parses_each_record_line_once(tmp_path, monkeypatch):
    """One JSON parse per record line (issue 19: the replay parsed every line twice); only a
    line that can be a note is looked at before the records are read."""
    journal = Journal(tmp_path, clock=lambda: T0)
    kept, gone = record("kept"), record("gone", 2)
    journal.append(kept)
    journal.append(gone)
    journal.append(record("third", 3))
    journal.append_note("expired", gone.to_dict())
    calls: list[bytes] = []
    real_loads = journal_module.json.loads

    def counting_loads(text: str) -> object:
        calls.append(text.encode())
        return real_loads(text)

    monkeypatch.setattr(journal_module.json, "loads", counting_loads)
    assert [r.key for r in Journal(tmp_path).read_all()] == ["kept", "third"]
    assert len(calls) == 3 + 2  # three records once, the note in both looks


def test_a_note_whose_kind_is_spelled_with_an_escape_still_expires_its_version(tmp_path):
    """A hostile or foreign writer may spell ``kind`` as ``\\u006bind``: still a note to JSON,
    so the look for notes by their bytes must not miss it."""
    journal = Journal(tmp_path, clock=lambda: T0)
    gone = record("gone")
    journal.append(gone)
    journal.append(record("kept", 2))
    note = json.dumps({"kind": "expired", **gone.to_dict()}).replace('"kind"', '"\\u006bind"')
    with (tmp_path / "2026-11-23.jsonl").open("a") as segment:
        segment.write(note + "\n")
    reader = Journal(tmp_path)
    assert [r.key for r in reader.read_all()] == ["kept"]
    assert len(reader.rejections) == 0


def _two_pass_read_all(journal: Journal) -> list[VersionRecord]:
    """The replay before it parsed each line once (aee254e's parent): the reference model."""
    expired_at: dict[tuple[str, str, str], int] = {}
    reordered: dict[tuple[str, str, str], tuple[int, str]] = {}
    for index, entry in enumerate(journal.entries(notes_only=True)):
        if isinstance(entry, Note) and entry.kind == "expired":
            expired_at[journal_module._identity(entry.fields)] = index
        elif isinstance(entry, Note) and entry.kind == "order":
            reordered[journal_module._identity(entry.fields)] = (index, entry.fields["order_key"])
    live = []
    for index, entry in enumerate(journal.entries()):
        if not isinstance(entry, VersionRecord):
            continue
        identity = (entry.bucket, entry.key, entry.version_token)
        if expired_at.get(identity, -1) > index:
            continue
        noted, order_key = reordered.get(identity, (-1, ""))
        live.append(dataclasses.replace(entry, order_key=order_key) if noted > index else entry)
    return live


_KEYS = ["a", 'say "kind"', "kind", "b\\c"]
_LINE = st.one_of(
    st.tuples(st.just("record"), st.sampled_from(_KEYS), st.integers(1, 3)),
    st.tuples(st.just("expired"), st.sampled_from(_KEYS), st.integers(1, 3)),
    st.tuples(st.just("order"), st.sampled_from(_KEYS), st.integers(1, 3)),
    st.tuples(st.just("escaped-expired"), st.sampled_from(_KEYS), st.integers(1, 3)),
    st.tuples(st.just("garbage"), st.sampled_from(["{not json", "[1]", '{"kind": 3}', "{}"])),
    st.tuples(st.just("torn"), st.just(None)),
    st.tuples(st.just("new-segment"), st.just(None)),
)


def _line(item: tuple[Any, ...]) -> str:
    kind = item[0]
    if kind in ("record", "expired", "order", "escaped-expired"):
        fields = record(item[1], item[2]).to_dict()
        if kind == "record":
            return json.dumps(fields, ensure_ascii=False)
        if kind == "order":
            identity = {name: fields[name] for name in ("bucket", "key", "version_token")}
            return json.dumps({"kind": "order", **identity, "order_key": f"9:{item[2]}"})
        note = json.dumps({"kind": "expired", **fields})
        return note.replace('"kind"', '"\\u006bind"') if kind == "escaped-expired" else note
    if kind == "torn":
        return json.dumps({"kind": "torn"})
    return str(item[1])


@given(st.lists(_LINE, max_size=25))
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_one_pass_replay_reads_as_the_two_pass_one(tmp_path_factory, lines):
    """Records, notes (some with an escaped kind), garbage and torn notes over segments:
    the same live records, in the same order, and the same rejections as the old replay."""
    directory = tmp_path_factory.mktemp("journal")
    day = 1
    segments: dict[int, list[str]] = {day: []}
    for item in lines:
        if item[0] == "new-segment":
            day += 1
            segments[day] = []
        else:
            segments[day].append(_line(item))
    for number, content in segments.items():
        (directory / f"2026-11-{number:02d}.jsonl").write_text(
            "".join(line + "\n" for line in content), encoding="utf-8"
        )
    new, old = Journal(directory), Journal(directory)
    assert list(new.read_all()) == _two_pass_read_all(old)
    assert sorted(map(str, new.rejections.all())) == sorted(map(str, old.rejections.all()))


def _identity(r: VersionRecord) -> tuple[str, str, str]:
    return (r.bucket, r.key, r.version_token)


def test_expired_after_names_only_notes_after_the_position_and_of_the_versions_asked(tmp_path):
    now = [T0]
    journal = Journal(tmp_path, clock=lambda: now[0])
    a, b, c = record("a"), record("b"), record("c")
    journal.append_note("expired", a.to_dict())  # before the position: not after it
    end = journal.append_many([a, b])[-1]
    assert journal.expired_after(end, {_identity(a), _identity(b)}) == set()
    journal.append_note("expired", c.to_dict())  # not asked about
    journal.append_note("order", {**b.to_dict(), "order_key": "z"})  # another kind
    assert journal.expired_after(end, {_identity(a), _identity(b)}) == set()
    now[0] = T0.replace(day=T0.day + 1)  # past midnight: the note goes to the next segment
    journal.append_note("expired", b.to_dict())
    assert journal.expired_after(end, {_identity(a), _identity(b)}) == {_identity(b)}


def test_expired_after_reads_nothing_when_nothing_was_appended_since(tmp_path, monkeypatch):
    journal = Journal(tmp_path, clock=lambda: T0)
    end = journal.append_many([record("a")])[-1]
    monkeypatch.setattr(
        journal_module, "_lines_of", lambda *_: (_ for _ in ()).throw(AssertionError("read"))
    )
    assert journal.expired_after(end, {_identity(record("a"))}) == set()


def test_expired_after_looks_at_no_segment_older_than_the_position(tmp_path, monkeypatch):
    now = [T0]
    journal = Journal(tmp_path, clock=lambda: now[0])
    journal.append_note("expired", record("a").to_dict())  # an older day's segment
    now[0] = T0.replace(day=T0.day + 1)
    end = journal.append_many([record("a")])[-1]
    journal.append_many([record("b")])  # appended since: the segment is read
    read: list[str] = []
    real = journal_module._lines_of
    monkeypatch.setattr(
        journal_module,
        "_lines_of",
        lambda segment, start: (read.append(segment.name), real(segment, start))[1],
    )
    assert journal.expired_after(end, {_identity(record("a"))}) == set()
    assert read == [end.segment]


# -- the digests a rejected line may name (gc keeps those copies) ---------------------------

D1, D2, D3 = "1" * 63 + "a", "2" * 63 + "b", "3" * 63 + "c"


def test_a_rejected_line_carries_every_digest_its_bytes_may_name():
    """The ``"sha256"`` value first; then any run of 64 hex digits or more (its name may be
    what rotted), the first and the last 64 of a longer one (a quote turned digit), in lower
    case (a letter's case is one bit); shorter runs (an eTag) are none."""
    raw = (
        f'{{"etag":"{"e" * 32}","key":"{D2.upper()}";"sha256":"{D1}","x":"{D3}f","y":"f{D3}"}}'
    ).encode()
    assert journal_module.digests_in(raw) == (D1, D2.lower(), D3, "3" * 62 + "cf", "f" + D3[:63])


def test_a_rejected_line_carries_at_most_a_bounded_number_of_digests():
    raw = b" ".join(f"{n:064x}".encode() for n in range(1000)) + f' "sha256":"{D1}"'.encode()
    found = journal_module.digests_in(raw)
    assert len(found) == journal_module.MAX_LINE_DIGESTS and found[0] == D1


def test_a_line_past_the_length_bound_is_scanned_a_piece_at_a_time_across_its_cuts(tmp_path):
    """Never held whole: the reader reads MAX_LINE_BYTES + 1 bytes, then MAX_LINE_BYTES at a
    time; a digest cut in two by a piece's end still counts."""
    cut = journal_module.MAX_LINE_BYTES + 1
    line = bytearray(b"." * (3 * journal_module.MAX_LINE_BYTES))
    for at, digest in ((10, D1), (cut - 30, D2), (len(line) - 80, D3)):
        line[at : at + 64] = digest.encode()
    (tmp_path / "2026-11-23.jsonl").write_bytes(bytes(line) + b"\n" + record_line("after"))
    journal = Journal(tmp_path)

    assert [r.key for r in journal.read_all()] == ["after"]
    (rejected,) = journal.rejections.all()
    assert (rejected.reason, rejected.digests()) == ("too long", {D1, D2, D3})


def test_only_a_rejected_line_is_scanned_for_digests(tmp_path, monkeypatch):
    """A journal's good lines cost the scan nothing: records, notes and a torn line's note."""
    journal = Journal(tmp_path, clock=lambda: T0)
    journal.append(record("a"))
    journal.append_note("expired", record("gone").to_dict())
    journal.append_order(record("a"), "9:x")
    scanned: list[bytes] = []
    real = journal_module.digests_in

    def counting(raw: bytes, found: dict[str, None] | None = None) -> tuple[str, ...]:
        scanned.append(raw)
        return real(raw, found)

    monkeypatch.setattr(journal_module, "digests_in", counting)
    reader = Journal(tmp_path)
    assert [r.key for r in reader.read_all()] == ["a"] and list(reader.read_notes())
    assert scanned == []

    with (tmp_path / "2026-11-23.jsonl").open("ab") as segment:
        segment.write(record_line("b").replace(b",", b";", 1))
    reader = Journal(tmp_path)
    assert [r.key for r in reader.read_all()] == ["a"]
    assert len(scanned) == 1 and "c" * 64 in reader.rejections.all()[0].digests()


def record_line(key: str) -> bytes:
    return json.dumps(record(key).to_dict()).encode() + b"\n"


def test_a_clock_stepped_back_across_midnight_never_puts_a_line_before_a_later_note(tmp_path):
    """A replay reads segments in name order: a record appended, after the clock stepped
    back a day, to the earlier day's segment was read before the `expired` note of the
    later one and taken as expired, though written after it (its copy then freed by gc)."""
    now = [T0.replace(day=T0.day + 1)]
    journal = Journal(tmp_path, clock=lambda: now[0])
    a = record("a")
    journal.append(a)
    journal.append_note("expired", a.to_dict())
    now[0] = T0  # an NTP step back across midnight
    journal.append(a)  # backed up again, after the note

    assert [r.key for r in Journal(tmp_path, clock=lambda: T0).read_all()] == ["a"]
    assert [p.name for p in tmp_path.glob("*.jsonl")] == ["2026-11-24.jsonl"]  # T0 + 1 day
    # a fresh Journal (another process, a restart) finds the newest segment itself
    Journal(tmp_path, clock=lambda: T0).append(record("b"))
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
