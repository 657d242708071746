"""Hostile records (issue 16, item 3): a journal line or a DynamoDB item that is not a valid
record is skipped, counted and named (segment:line, or the item's pk and sk); every command
carries on with the good records and exits 1 with a summary naming the bad ones. Never a
traceback.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import agent as agent_cli
from agent.cli import restore as restore_cli
from agent.cli.common import ExitCode
from agent.lifecycle.gc import GarbageCollector
from agent.records import Rejection, VersionRecord
from agent.runtime.wiring import lifecycle_context
from agent.stats import Stats
from agent.storage.journal import MAX_LINE_BYTES, Journal, parse_line
from agent.storage.ledger import Ledger, parse_item
from tests.support.aws import BUCKET, TABLE
from tests.support.backed_up import BackedUp, write_config

GOOD = b"good content\n" * 40


def _good_line(volume) -> dict[str, Any]:
    """The journal line of the backed-up good.txt, to mutate into bad ones."""
    (segment,) = volume.journal_dir.glob("*.jsonl")
    line: dict[str, Any] = json.loads(segment.read_bytes().splitlines()[0])
    assert line["key"] == "good.txt"
    return line


def _bad(base: dict[str, Any], **changes: Any) -> bytes:
    line = {**base, "key": "bad.txt", "version_token": "v:bad"} | changes
    for name, value in changes.items():
        if value is _DROP:
            del line[name]
    return json.dumps(line).encode()


_DROP = object()

# name → a function of the good line giving the bad line's bytes
BAD_LINES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "not JSON": lambda g: b'{"bucket": "x", "key": ',
    "not an object": lambda g: b"[1, 2, 3]",
    "not UTF-8": lambda g: b'{"key": "\xff\xfe"}',
    "nested past the parser": lambda g: b"[" * 100_000,
    "missing key": lambda g: _bad(g, key=_DROP),
    "missing event_time": lambda g: _bad(g, event_time=_DROP),
    "size a string": lambda g: _bad(g, size="640"),
    "deleted a string": lambda g: _bad(g, deleted="false"),
    "key a number": lambda g: _bad(g, key=7),
    "NUL in the key": lambda g: _bad(g, key="bad\x00.txt"),
    "key longer than S3 allows": lambda g: _bad(g, key="k" * 2000),
    "negative size": lambda g: _bad(g, size=-1),
    "absurd size": lambda g: _bad(g, size=10**30),
    "sha256 a path out of the store": lambda g: _bad(g, sha256="../../../../etc/passwd"),
    "sha256 not hex": lambda g: _bad(g, sha256="z" * 64),
    "unparsable time": lambda g: _bad(g, event_time="yesterday at noon"),
    "time past year 9999": lambda g: _bad(g, backup_time="9999-12-31T23:59:59-23:59"),
    "bucket with a slash": lambda g: _bad(g, bucket="a/b"),
    "note kind a number": lambda g: b'{"kind": 5}',
    "expired note without a key": lambda g: b'{"kind": "expired", "bucket": "b"}',
}


def _journal_with_every_bad_line(volume) -> dict[str, str]:
    """Append one line of each kind; return {kind: "segment:line"}."""
    good = _good_line(volume)
    (segment,) = volume.journal_dir.glob("*.jsonl")
    lines = segment.read_bytes().splitlines()
    where = {}
    with segment.open("ab") as handle:
        for name, make in BAD_LINES.items():
            handle.write(make(good) + b"\n")
            lines.append(b"")
            where[name] = f"{segment.name}:{len(lines)}"
        handle.write(json.dumps({**good, "key": "after.txt"}).encode() + b"\n")
    return where


@pytest.fixture
def backups(aws, volume) -> BackedUp:
    backed_up = BackedUp(aws, volume)
    backed_up.put("good.txt", GOOD)
    return backed_up


@pytest.fixture
def config_path(tmp_path, backup_root) -> Path:
    return write_config(tmp_path / "config.yaml", backup_root, retention={"keep_last_versions": 1})


def _restore(config_path: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = restore_cli.main([*args, "--config", str(config_path)], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _agent(config_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = agent_cli.main([*args, "--config", str(config_path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _age(path: Path, days: int = 30) -> None:
    """Date a copy far past any grace period (as if backed up long ago)."""
    then = time.time() - days * 86400
    os.utime(path, (then, then))


# -- the reader, per kind --------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_each_kind_of_bad_line_is_rejected_by_name_and_the_good_ones_read(kind, backups, volume):
    good = _good_line(volume)
    (segment,) = volume.journal_dir.glob("*.jsonl")
    with segment.open("ab") as handle:
        handle.write(BAD_LINES[kind](good) + b"\n")
        handle.write(json.dumps({**good, "key": "after.txt"}).encode() + b"\n")

    journal = Journal(volume.journal_dir)
    assert [r.key for r in journal.read_all()] == ["good.txt", "after.txt"]
    (rejected,) = journal.rejections.all()
    assert rejected.where == f"{segment.name}:2"
    assert rejected.source == "journal" and rejected.reason


def test_a_key_with_dots_or_a_leading_slash_is_a_valid_record_restored_inside_the_target(
    backups, volume, config_path, tmp_path
):
    """Keys are data: `../x` and `/abs` are legitimate S3 keys, placed escaped (paths.py)."""
    good = _good_line(volume)
    (segment,) = volume.journal_dir.glob("*.jsonl")
    with segment.open("ab") as handle:
        for key in ("../../escape.txt", "/etc/abs.txt"):
            handle.write(json.dumps({**good, "key": key}).encode() + b"\n")
    target = tmp_path / "out"

    code, out, _ = _restore(config_path, "restore", "--offline", "--all", "--to", str(target))

    assert code == ExitCode.OK, out
    restored = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == GOOD)
    assert len(restored) == 3
    assert all(p.is_relative_to(target) for p in restored)


def test_a_line_longer_than_the_bound_is_rejected_unread(volume):
    journal = Journal(volume.journal_dir)
    segment = volume.journal_dir / "2026-11-01.jsonl"
    segment.write_bytes(b'{"x":"' + b"a" * (MAX_LINE_BYTES + 10) + b'"}\n' + b"[]\n")
    assert list(journal.read_all()) == []
    assert [(r.where, r.reason) for r in journal.rejections.all()] == [
        ("2026-11-01.jsonl:1", "too long"),
        ("2026-11-01.jsonl:2", "not an object: list"),
    ]


def test_a_segment_that_is_a_symlink_or_a_fifo_is_not_opened(volume, tmp_path):
    import os

    outside = tmp_path / "outside.jsonl"
    outside.write_text("{}\n")
    (volume.journal_dir / "2026-11-01.jsonl").symlink_to(outside)
    os.mkfifo(volume.journal_dir / "2026-11-02.jsonl")
    journal = Journal(volume.journal_dir)
    assert list(journal.read_all()) == []  # returns: a FIFO would block a reader forever
    assert {r.where for r in journal.rejections.all()} == {
        "2026-11-01.jsonl",
        "2026-11-02.jsonl",
    }


def test_a_torn_line_named_by_the_next_append_is_not_counted(backups, volume):
    (segment,) = volume.journal_dir.glob("*.jsonl")
    with segment.open("ab") as handle:
        handle.write(b'{"bucket":"company-documents","key":"torn')  # a crash mid-write
    backups.put("after.txt", b"after")
    journal = Journal(volume.journal_dir)
    assert [r.key for r in journal.read_all()] == ["good.txt", "after.txt"]
    assert journal.rejections.all() == []


# -- every command, journal (--offline, reindex, gc, scrub) ---------------------------------


def _assert_named(output: str, where: dict[str, str]) -> None:
    assert f"bad records (skipped): {len(where)}" in output
    for kind, place in where.items():
        assert f"journal {place}:" in output, kind


@pytest.mark.parametrize(
    "command",
    [
        ("restore", "--all", "--to", "{target}"),
        ("restore", "--all", "--to", "{target}", "--dry-run"),
        ("restore", "--key", "good.txt", "--to", "{target}"),
        ("list",),
        ("list", "--versions"),
        ("verify",),
    ],
    ids=" ".join,
)
def test_restore_commands_offline_use_the_good_lines_and_name_the_bad(
    command, backups, volume, config_path, tmp_path
):
    where = _journal_with_every_bad_line(volume)
    target = tmp_path / "out"
    args = [part.format(target=target) for part in command]

    code, out, err = _restore(config_path, *args, "--offline")

    assert code == ExitCode.FAILURE, err
    assert "Traceback" not in err
    _assert_named(out, where)
    if args[0] == "list":
        assert "good.txt" in out and "after.txt" in out
    elif args[0] == "verify":
        assert "verified 1 of 1 stored copies" in out
    elif "--dry-run" in args:
        assert not target.exists() and "good.txt" in out
    else:
        assert (target / "good.txt").read_bytes() == GOOD


def test_restore_json_names_each_bad_line(backups, volume, config_path, tmp_path):
    where = _journal_with_every_bad_line(volume)
    code, out, _ = _restore(
        config_path, "restore", "--offline", "--all", "--to", str(tmp_path / "o"), "--json"
    )
    assert code == ExitCode.FAILURE
    lines = [json.loads(line) for line in out.splitlines()]
    rejected = {line["where"] for line in lines if line.get("type") == "rejected"}
    assert rejected == set(where.values())
    files = {line["key"]: line["status"] for line in lines if line.get("type") == "file"}
    assert files == {"good.txt": "restored", "after.txt": "restored"}


@pytest.mark.parametrize("command", [("reindex",), ("gc",), ("gc", "--dry-run"), ("scrub",)])
def test_journal_jobs_use_the_good_lines_and_name_the_bad(
    command, backups, volume, config_path, capsys, aws
):
    where = _journal_with_every_bad_line(volume)
    if command == ("reindex",):
        aws.dynamodb.delete_table(TableName=TABLE)

    code, out, err = _agent(config_path, capsys, *command)

    assert code == ExitCode.FAILURE, err
    assert "Traceback" not in err
    _assert_named(out, where)
    if command == ("reindex",):
        ledger = Ledger(aws.dynamodb, TABLE)
        assert {r.key for r in ledger.keys(BUCKET)} == {"good.txt", "after.txt"}
    if command[0] == "scrub":
        assert "checked 1 of 1 copies, 0 corrupt" in out
    if command[0] == "gc":
        assert volume.has_copy(_good_line(volume)["sha256"])


def test_gc_keeps_a_copy_that_only_a_rejected_line_names(backups, volume, config_path, capsys):
    """The line is bad (its time does not parse) but names a stored copy: gc must not free
    what a person may still recover by fixing the line."""
    good = _good_line(volume)
    (segment,) = volume.journal_dir.glob("*.jsonl")
    segment.write_bytes(_bad(good, event_time="not a time") + b"\n")
    _age(volume.copy_path(good["sha256"]))  # else the grace period alone keeps it

    code, out, _ = _agent(config_path, capsys, "gc")

    assert code == ExitCode.FAILURE
    assert volume.has_copy(good["sha256"])
    assert f"journal {segment.name}:1: event_time is not an ISO-8601 time" in out


# One byte of a record's line changed, as bit rot or a damaged volume changes it (old -> new
# bytes of the line, given its digest). The line no longer parses, or names its digest in a
# form no record has, and is rejected; DynamoDB still points at the copy.
ROTS: dict[str, Callable[[str], tuple[bytes, bytes]]] = {
    "a comma turned semicolon": lambda sha: (b',"key":', b';"key":'),
    "a high bit in another name (not UTF-8)": lambda sha: (b'"bucket"', b'"buck\xe5t"'),
    "a high bit in the sha256 name": lambda sha: (b'"sha256"', b'"sh\xe1256"'),
    "the quote before the digest a hex digit": lambda sha: (
        b':"' + sha.encode(),
        b":b" + sha.encode(),
    ),
    "the quote after the digest a hex digit": lambda sha: (
        sha.encode() + b'"',
        sha.encode() + b"b",
    ),
    "a digest letter upper case": lambda sha: (sha.encode(), _upper_first_letter(sha).encode()),
    # still JSON, the digest under a name no field has: the record was accepted as one with
    # no copy, and gc freed it (found while fixing the above, 2026-12-02)
    "the sha256 name another name": lambda sha: (b'"sha256"', b'"sha246"'),
}


def _upper_first_letter(sha: str) -> str:
    at = next(i for i, c in enumerate(sha) if c in "abcdef")
    return sha[:at] + sha[at].upper() + sha[at + 1 :]


@pytest.mark.parametrize("rot", list(ROTS))
def test_gc_keeps_the_copy_a_line_damaged_in_one_byte_names(
    rot, backups, volume, config_path, capsys, aws
):
    """The line is rejected (named by gc as bad), but a person may still recover it: gc must
    not free its copy, which the ledger still names, long past the grace period."""
    sha = _good_line(volume)["sha256"]
    (segment,) = volume.journal_dir.glob("*.jsonl")
    line = segment.read_bytes()
    old, new = ROTS[rot](sha)
    assert line.count(old) == 1 and len(old) == len(new)
    assert sum(a != b for a, b in zip(old, new, strict=True)) == 1
    segment.write_bytes(line.replace(old, new))
    _age(volume.copy_path(sha))

    code, out, _ = _agent(config_path, capsys, "gc")

    assert code == ExitCode.FAILURE
    assert f"journal {segment.name}:1: " in out
    assert volume.has_copy(sha), "gc freed the copy the ledger names"
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "good.txt")
    assert latest is not None and latest.sha256 == sha


def test_gc_keeps_the_copies_a_line_past_the_length_bound_names(
    backups, volume, config_path, capsys
):
    """A line longer than MAX_LINE_BYTES (tampered with, or written by a bug) is never held,
    but its bytes are scanned as they are read: the digest past its first MiB counts too."""
    good = _good_line(volume)
    (segment,) = volume.journal_dir.glob("*.jsonl")
    segment.write_bytes(json.dumps({**good, "etag": "x" * (2 * MAX_LINE_BYTES)}).encode() + b"\n")
    _age(volume.copy_path(good["sha256"]))

    code, out, _ = _agent(config_path, capsys, "gc")

    assert code == ExitCode.FAILURE
    assert f"journal {segment.name}:1: too long" in out
    assert volume.has_copy(good["sha256"])


# -- every command, DynamoDB items -----------------------------------------------------------

BAD_ITEMS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "size a string": lambda i: i | {"size": {"S": "640"}},
    "absurd size": lambda i: i | {"size": {"N": "1" + "0" * 30}},
    "NUL in the key": lambda i: i | {"key": {"S": "bad\x00.txt"}},
    "unparsable time": lambda i: i | {"event_time": {"S": "tomorrow"}},
    "missing version_token": lambda i: {k: v for k, v in i.items() if k != "version_token"},
    "deleted a string": lambda i: i | {"deleted": {"S": "false"}},
    "sha256 out of the store": lambda i: i | {"sha256": {"S": "../" * 21 + "x"}},
    "pk of another key": lambda i: i | {"pk": {"S": f"{BUCKET}/elsewhere.txt"}},
}


def _plant_bad_items(aws) -> list[str]:
    """A LATEST and a version item for bad-N.txt per kind; return the places named."""
    ledger = Ledger(aws.dynamodb, TABLE)
    good = ledger.latest(BUCKET, "good.txt")
    assert good is not None
    places = []
    for number, make in enumerate(BAD_ITEMS.values()):
        key = f"bad-{number}.txt"
        record = VersionRecord(**{**good.to_dict(), "key": key})
        for item in (
            ledger._item(record, "V#" + record.version_token),
            ledger._latest_item(record),
        ):
            bad = make(item)
            aws.dynamodb.put_item(TableName=TABLE, Item=bad)
            places.append(f"{bad['pk']['S']} {bad['sk']['S']}")
    return places


@pytest.mark.parametrize(
    "command",
    [
        ("restore", "--all", "--to", "{target}"),
        ("restore", "--all", "--to", "{target}", "--dry-run"),
        ("list",),
        ("list", "--versions"),
        ("verify",),
    ],
    ids=" ".join,
)
def test_restore_commands_use_the_good_items_and_name_the_bad(
    command, backups, aws, config_path, tmp_path
):
    places = _plant_bad_items(aws)
    target = tmp_path / "out"
    args = [part.format(target=target) for part in command]

    code, out, err = _restore(config_path, *args)

    assert code == ExitCode.FAILURE, err
    assert "Traceback" not in err
    assert "bad records (skipped)" in out
    for place in places:
        if "LATEST" in place:  # each key's versions are all bad too: LATEST named first
            assert f"dynamodb {place}:" in out, place
    if args[0] == "restore" and "--dry-run" not in args:
        assert (target / "good.txt").read_bytes() == GOOD
        assert sorted(p.name for p in target.iterdir()) == ["good.txt"]
    elif args[0] != "verify":
        assert "good.txt" in out


def test_retention_uses_the_good_items_and_names_the_bad(backups, aws, config_path, capsys):
    backups.put("good.txt", GOOD + b"v2")
    places = _plant_bad_items(aws)

    code, out, err = _agent(config_path, capsys, "retention")

    assert code == ExitCode.FAILURE, err
    assert "expired 1" in out  # good.txt's older version, keep_last_versions: 1
    for place in places:
        if "LATEST" in place:
            assert f"dynamodb {place}:" in out, place


def test_a_malformed_latest_is_derived_from_the_versions_and_replaced_by_the_next_backup(
    backups, aws
):
    """The write path meets a malformed LATEST: it is settled over, not a crash."""
    table_item = {"pk": {"S": f"{BUCKET}/good.txt"}, "sk": {"S": "LATEST"}}
    aws.dynamodb.put_item(TableName=TABLE, Item=table_item | {"size": {"N": "-5"}})
    assert Ledger(aws.dynamodb, TABLE).latest(BUCKET, "good.txt").key == "good.txt"

    backups.put("good.txt", GOOD + b"v2")

    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "good.txt")
    assert latest is not None and latest.size == len(GOOD) + 2


# -- the daemon's reading ------------------------------------------------------------------------


def test_the_daemon_counts_rejected_records_and_its_jobs_carry_on(backups, aws, volume, config):
    _journal_with_every_bad_line(volume)
    stats = Stats()
    ctx = lifecycle_context(config, aws, volume, "vol-test", stats=stats)

    report = GarbageCollector.from_context(ctx).run_once()
    GarbageCollector.from_context(ctx).run_once()  # the same lines: counted once

    assert len(report.rejected) == len(BAD_LINES)
    assert stats.lifecycle["records.rejected"] == len(BAD_LINES)


# -- fuzz ----------------------------------------------------------------------------------

RECORD = {
    "bucket": BUCKET,
    "key": "k",
    "version_token": "v:1",
    "order_key": "x",
    "event_name": "ObjectCreated:Put",
    "event_time": "2026-11-01T09:00:00+00:00",
    "backup_time": "2026-11-01T09:00:01+00:00",
    "volume_id": "vol-test",
    "sha256": "a" * 64,
    "size": 1,
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.lists(st.binary(max_size=200), max_size=6))
def test_any_bytes_between_valid_lines_never_raise_and_every_valid_line_survives(
    junk, tmp_path_factory
):
    directory = tmp_path_factory.mktemp("journal")
    lines = []
    for number, chunk in enumerate(junk):
        lines += [json.dumps({**RECORD, "key": f"k{number}"}).encode(), chunk]
    (directory / "2026-11-01.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))

    read = {r.key for r in Journal(directory).read_all()}

    assert {f"k{number}" for number in range(len(junk))} <= read


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from([*sorted(RECORD), "deleted", "stored_size", "metadata"]), value=JSON)
def test_any_value_in_any_field_is_a_record_or_a_rejection(field, value):
    raw = json.dumps({**RECORD, field: value}).encode()
    entry = parse_line(raw, "2026-11-01.jsonl", 1)
    assert isinstance(entry, VersionRecord | Rejection)
    if isinstance(entry, VersionRecord):
        assert entry.size is None or entry.size >= 0
        assert entry.sha256 is None or len(entry.sha256) == 64
        assert "\x00" not in entry.key


DYNAMO = st.recursive(
    st.fixed_dictionaries({"S": st.text(max_size=10)})
    | st.fixed_dictionaries({"N": st.text(max_size=10)})
    | st.fixed_dictionaries({"BOOL": st.booleans() | st.text(max_size=3)})
    | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    lambda inner: (
        st.fixed_dictionaries({"L": st.lists(inner, max_size=2)})
        | st.fixed_dictionaries({"M": st.dictionaries(st.text(max_size=4), inner, max_size=2)})
    ),
    max_leaves=4,
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from([*sorted(RECORD), "pk", "sk", "deleted"]), value=DYNAMO)
def test_any_attribute_value_in_an_item_is_a_record_or_a_rejection(field, value):
    item = {k: {"N": str(v)} if isinstance(v, int) else {"S": v} for k, v in RECORD.items()}
    item |= {"pk": {"S": f"{BUCKET}/k"}, "sk": {"S": "V#v:1"}, field: value}
    assert isinstance(parse_item(item), VersionRecord | Rejection)


def test_dynamodb_numbers_read_as_whole_numbers():
    record = VersionRecord.from_dict({**RECORD, "size": Decimal("12")})
    assert record.size == 12 and isinstance(record.size, int)
    with pytest.raises(ValueError, match="size is not a whole number"):
        VersionRecord.from_dict({**RECORD, "size": Decimal("1.5")})


def test_reindex_repairs_a_malformed_version_item_from_the_journal(
    backups, aws, config_path, capsys
):
    ledger = Ledger(aws.dynamodb, TABLE)
    good = ledger.latest(BUCKET, "good.txt")
    item = ledger._item(good, "V#" + good.version_token)
    aws.dynamodb.put_item(TableName=TABLE, Item=item | {"size": {"S": "not a size"}})
    assert _restore(config_path, "list", "--versions")[0] == ExitCode.FAILURE

    code, out, _ = _agent(config_path, capsys, "reindex")

    assert code == ExitCode.OK, out
    assert "1 added" in out  # the malformed item was replaced by the journal's record
    assert Ledger(aws.dynamodb, TABLE).versions(BUCKET, "good.txt") == [good]
    assert _restore(config_path, "list", "--versions")[0] == ExitCode.OK


def test_a_key_with_a_lone_surrogate_is_restored_and_reported_in_json_a_utf8_stream_takes(
    backups, volume, config_path, tmp_path
):
    """S3 keys are UTF-8, so only a damaged journal line carries a lone surrogate. Its file
    is restored under an escaped name; `--json` wrote the key as is, and a UTF-8 stdout
    raised UnicodeEncodeError after the files were restored (the temp-sweep fix's note,
    2026-12-02)."""
    line = _good_line(volume)
    (segment,) = volume.journal_dir.glob("*.jsonl")
    with segment.open("ab") as journal:
        journal.write(_bad(line, key="lone \ud800 key") + b"\n")
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # as sys.stdout
    target = str(tmp_path / "out")
    args = ["restore", "--offline", "--all", "--json", "--to", target]
    code = restore_cli.main(
        [*args, "--config", str(config_path)],
        out=out,
        err=io.StringIO(),
    )
    rows = [json.loads(line) for line in raw.getvalue().splitlines()]
    assert code == ExitCode.OK, rows
    files = {row["key"]: row for row in rows if row["type"] == "file"}
    assert files["lone \ud800 key"]["status"] == "restored"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good.txt",
        "lone %ED%A0%80 key",
    ]


@pytest.mark.parametrize("appended_after", [False, True], ids=["last-segment-line", "then-torn"])
def test_gc_keeps_the_copy_of_a_last_line_whose_newline_rotted(
    appended_after, backups, volume, config_path, capsys, aws
):
    """The last newline of a segment damaged: the line reads as one a crash cut short (never
    yielded; once something is appended after it, followed by a `torn` note and not counted),
    and gc freed its copy while DynamoDB named it (noted by the rotten-line fix, 2026-12-02).
    A torn line's copy is kept too: a crash's costs one copy kept a while at worst."""
    sha = _good_line(volume)["sha256"]
    (segment,) = volume.journal_dir.glob("*.jsonl")
    line = segment.read_bytes()
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    segment.write_bytes(line[:-1] + b"x")
    if appended_after:
        backups.put("later.txt", b"a later version\n")
        assert b'"torn"' in segment.read_bytes()
    _age(volume.copy_path(sha))

    _agent(config_path, capsys, "gc")

    assert volume.has_copy(sha), "gc freed the copy the ledger names"
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "good.txt")
    assert latest is not None and latest.sha256 == sha
