"""`backup-restore find` and the filters `list`, `restore` and `share` share: every filter
gives the same rows online (DynamoDB, in-process moto) and offline (the volume's journal).

The records are written as the pipeline writes them (journal line, then ledger item) with
the attributes a test needs: content types, tags, sizes and event times chosen.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import order
from agent.cli.restore import main
from agent.records import VersionRecord
from agent.restore.find import Filter, FilterError, Scan, rows
from agent.restore.source import JournalSource, LedgerSource
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.backed_up import T0, write_config

SOURCES = ["online", "offline"]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]

    def keys(self) -> list[str]:
        return [row["key"] for row in self.json()]


class Records:
    """Writes records to the journal and the ledger, one sequencer after another."""

    def __init__(self, ledger: Ledger, journal: Journal) -> None:
        self.ledger = ledger
        self.journal = journal
        self.sequence = 0

    def put(
        self,
        key: str,
        at: datetime,
        *,
        size: int = 100,
        content_type: str | None = "text/plain",
        tags: dict[str, str] | None = None,
        deleted: bool = False,
    ) -> VersionRecord:
        self.sequence += 1
        sequencer = f"{self.sequence:016X}"
        version = f"v{self.sequence}"
        record = VersionRecord(
            bucket=BUCKET,
            key=key,
            version_token=("del:" if deleted else "") + f"v:{version}",
            order_key=order.event_key(at, sequencer),
            event_name="ObjectRemoved:DeleteMarkerCreated" if deleted else "ObjectCreated:Put",
            event_time=at.isoformat(),
            backup_time=(at + timedelta(seconds=1)).isoformat(),
            volume_id="vol-test",
            deleted=deleted,
            delete_marker=deleted,
            version_id=version,
            sequencer=sequencer,
            sha256=None if deleted else f"{self.sequence:064x}",
            size=None if deleted else size,
            stored_size=None if deleted else size,
            content_type=None if deleted else content_type,
            metadata=None if deleted else {},
            tags=None if deleted else (tags if tags is not None else {}),
        )
        self.journal.append(record)
        self.ledger.record(record)
        return record


@pytest.fixture
def records(aws, volume) -> Records:
    written = Records(Ledger(aws.dynamodb, TABLE), Journal(volume.journal_dir))
    hour = timedelta(hours=1)
    written.put(
        "docs/Invoice-2026-11.pdf",
        T0,
        size=250_000,
        content_type="application/pdf",
        tags={"team": "finance", "year": "2026"},
    )
    written.put(
        "docs/invoice-2026-10.pdf",
        T0 + hour,
        size=240_000,
        content_type="application/pdf",
        tags={"team": "finance", "year": "2025"},
    )
    written.put("docs/notes.txt", T0 + 2 * hour, size=1_000)
    written.put("docs/notes.txt", T0 + 3 * hour, size=2_000)  # a second version
    written.put(
        "images/cat.JPG",
        T0 + 4 * hour,
        size=3_000_000,
        content_type="image/jpeg",
        tags={"team": "marketing"},
    )
    written.put("images/dog.png", T0 + 5 * hour, size=5_000_000, content_type="image/png")
    written.put(
        "old/invoice-2019.pdf",
        T0 + 6 * hour,
        size=90_000,
        content_type="application/pdf",
        tags={"team": "finance"},
    )
    written.put("old/invoice-2019.pdf", T0 + 7 * hour, deleted=True)
    written.put("untyped.bin", T0 + 8 * hour, size=10, content_type=None, tags=None)
    return written


@pytest.fixture
def config_path(tmp_path, backup_root) -> Path:
    return write_config(tmp_path / "config.yaml", backup_root)


@pytest.fixture
def cli(config_path):
    def run(command: str, *args: str, source: str = "online") -> Run:
        offline = ["--offline"] if source == "offline" else []
        out, err = io.StringIO(), io.StringIO()
        code = main([command, "--config", str(config_path), *offline, *args], out=out, err=err)
        return Run(code, out.getvalue(), err.getvalue())

    return run


CASES = [
    pytest.param(
        ["invoice"],
        ["docs/Invoice-2026-11.pdf", "docs/invoice-2026-10.pdf"],
        id="substring-case-insensitive",
    ),
    pytest.param(
        ["docs/*.pdf"], ["docs/invoice-2026-10.pdf", "docs/Invoice-2026-11.pdf"][::-1], id="glob"
    ),
    pytest.param(["docs/i*"], ["docs/invoice-2026-10.pdf"], id="glob-is-case-sensitive"),
    pytest.param(["*.jpg"], [], id="glob-whole-key"),
    pytest.param(
        ["--regex", r"\d{4}-1[01]"],
        ["docs/Invoice-2026-11.pdf", "docs/invoice-2026-10.pdf"],
        id="regex",
    ),
    pytest.param(
        ["--tag", "team=finance"],
        ["docs/Invoice-2026-11.pdf", "docs/invoice-2026-10.pdf"],
        id="tag",
    ),
    pytest.param(
        ["--tag", "team=finance", "--tag", "year=2025"],
        ["docs/invoice-2026-10.pdf"],
        id="tags-all-of-them",
    ),
    pytest.param(
        ["--content-type", "image/"], ["images/cat.JPG", "images/dog.png"], id="content-type-prefix"
    ),
    pytest.param(["--content-type", "IMAGE/PNG"], ["images/dog.png"], id="content-type-case"),
    pytest.param(
        ["--since", "2026-11-01T11:00:00Z", "--until", "2026-11-01T13:30:00Z"],
        ["docs/notes.txt", "images/cat.JPG"],
        id="since-until",
    ),
    pytest.param(["--min-size", "1MB"], ["images/cat.JPG", "images/dog.png"], id="min-size"),
    pytest.param(["--max-size", "2000"], ["docs/notes.txt", "untyped.bin"], id="max-size"),
    pytest.param(
        ["--min-size", "100k", "--max-size", "3MiB"],
        ["docs/Invoice-2026-11.pdf", "docs/invoice-2026-10.pdf", "images/cat.JPG"],
        id="size-range",
    ),
    pytest.param(
        ["invoice", "--deleted"],
        ["docs/Invoice-2026-11.pdf", "docs/invoice-2026-10.pdf", "old/invoice-2019.pdf"],
        id="deleted",
    ),
    pytest.param(["notes", "--versions"], ["docs/notes.txt", "docs/notes.txt"], id="versions"),
    pytest.param(
        ["notes", "--versions", "--max-size", "1500"], ["docs/notes.txt"], id="versions-filtered"
    ),
    pytest.param(
        ["--prefix", "images/", "--content-type", "image/jp"],
        ["images/cat.JPG"],
        id="prefix-and-type",
    ),
    pytest.param(
        ["old/*", "--versions", "--deleted"],
        ["old/invoice-2019.pdf"] * 2,
        id="versions-of-a-deleted-key",
    ),
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("args", "expected"), CASES)
def test_each_filter_finds_the_same_rows_online_and_offline(records, cli, source, args, expected):
    result = cli("find", *args, "--json", source=source)
    assert result.code == 0, result.err
    assert result.keys() == sorted(expected)
    if source == "offline":  # and every field of every row is what DynamoDB answers
        assert result.json() == cli("find", *args, "--json", source="online").json()


@pytest.mark.parametrize("source", SOURCES)
def test_a_version_filter_looks_at_each_version(records, cli, source):
    rows_ = cli("find", "notes", "--versions", "--min-size", "1500", "--json", source=source)
    assert [(r["key"], r["size"]) for r in rows_.json()] == [("docs/notes.txt", 2000)]


@pytest.mark.parametrize("source", SOURCES)
def test_a_deleted_key_shows_its_last_copy_and_when_it_went(records, cli, source):
    [row] = cli("find", "2019", "--deleted", "--json", source=source).json()
    assert row["deleted"] is True and row["size"] == 90_000
    assert row["deleted_at"] == (T0 + timedelta(hours=7)).isoformat()


@pytest.mark.parametrize("source", SOURCES)
def test_pages_resume_after_the_last_key_and_never_split_a_key(records, cli, source):
    seen: list[str] = []
    after: list[str] = []
    for _ in range(10):
        page = cli("find", "--versions", "--limit", "2", "--json", *after, source=source)
        assert page.code == 0, page.err
        seen += page.keys()
        if "more: --after" not in page.err:
            break
        after = ["--after", page.err.split("--after ", 1)[1].strip().strip("'")]
    everything = cli("find", "--versions", "--json", source=source).keys()
    assert seen == everything
    assert seen.count("docs/notes.txt") == 2


@pytest.mark.parametrize("source", SOURCES)
def test_list_takes_the_same_filters(records, cli, source):
    result = cli("list", "--match", "INVOICE", "--tag", "year=2026", "--json", source=source)
    assert result.keys() == ["docs/Invoice-2026-11.pdf"]
    assert cli("list", "--json", source=source).keys() == cli("find", "--json").keys()


@pytest.mark.parametrize("source", SOURCES)
def test_restore_takes_the_same_filters(records, cli, source, tmp_path):
    result = cli(
        "restore",
        "--prefix",
        "docs/",
        "--content-type",
        "application/pdf",
        "--dry-run",
        "--to",
        str(tmp_path / "out"),
        "--json",
        source=source,
    )
    assert result.code == 0, result.err
    planned = sorted(r["key"] for r in result.json() if r.get("type") == "file")
    assert planned == ["docs/Invoice-2026-11.pdf", "docs/invoice-2026-10.pdf"]


@pytest.mark.parametrize("source", SOURCES)
def test_share_refuses_a_version_that_does_not_match(records, source, tmp_path, backup_root):
    restore = {"workers": 2, "staging_bucket": "share-staging"}
    config_path = write_config(tmp_path / "share.yaml", backup_root, restore=restore)
    offline = ["--offline"] if source == "offline" else []
    out, err = io.StringIO(), io.StringIO()
    argv = ["share", "--config", str(config_path), *offline, "--key", "docs/notes.txt"]
    code = main([*argv, "--max-size", "1500"], out=out, err=err)
    assert code == 1
    assert "does not match the filters" in err.getvalue()


def test_the_human_table_says_how_many_were_found(records, cli):
    result = cli("find", "invoice")
    assert result.code == 0
    assert "Invoice-2026-11.pdf" in result.out
    assert result.out.rstrip().endswith("2 keys found (7 keys read)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--regex", "("], "--regex"),
        (["--tag", "team"], "expected KEY=VALUE"),
        (["--since", "2026-11-02T00:00:00Z", "--until", "2026-11-01T00:00:00Z"], "--until"),
        (["--after", "no-slash"], "BUCKET/KEY"),
    ],
)
def test_filters_that_cannot_work_are_usage_errors(records, cli, args, message):
    result = cli("find", *args)
    assert result.code == 2
    assert message in result.err


def test_a_glob_reads_only_under_its_literal_head(records, aws, volume):
    """`docs/*.pdf` is a Query on `docs/`: the keys read are the ones under it."""
    online = LedgerSource(Ledger(aws.dynamodb, TABLE))
    offline = JournalSource(Journal(volume.journal_dir))
    for source in (online, offline):
        scan = Scan()
        found = list(rows(source, [BUCKET], only=Filter.build(keyword="docs/*.pdf"), scan=scan))
        assert len(found) == 2
        assert scan.keys == 3  # docs/ holds three keys; images/, old/ and untyped.bin unread


def test_a_filter_is_checked_when_built():
    with pytest.raises(FilterError):
        Filter.build(min_size=10, max_size=5)
    assert Filter.build().empty
    assert Filter.build(keyword="a*").key_prefix() == "a"


def test_a_long_search_reports_its_progress_every_thousand_keys():
    """What drives the progress line on a terminal: a tick per 1,000 keys read."""
    records = [
        VersionRecord(
            bucket=BUCKET, key=f"k{n:05d}", version_token=f"v:{n}",
            order_key=order.event_key(T0, f"{n:016X}"), event_name="ObjectCreated:Put",
            event_time=T0.isoformat(), backup_time=T0.isoformat(), volume_id="vol-test",
            version_id=str(n), size=1,
        )
        for n in range(2500)
    ]  # fmt: skip

    class Memory:
        name = "memory"

        def latest(self, bucket: str, prefix: str = "", after: str = ""):
            return iter(records)

        def history(self, bucket: str, key: str):
            return []

    ticks: list[tuple[int, int]] = []
    scan = Scan(tick=lambda s: ticks.append((s.keys, s.matches)))
    found = list(rows(Memory(), [BUCKET], only=Filter.build(keyword="k01"), scan=scan))
    assert len(found) == 1000
    assert ticks == [(1000, 0), (2000, 999)]  # the tick comes as the 2,000th key is read
