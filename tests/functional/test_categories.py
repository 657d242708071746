"""Categories: `categories:` rules name each version at backup; the name is in the journal
and the ledger, shown by `list`, and searched with `--category` online and offline alike."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import ValidationError

from agent.categories import Categories
from agent.cli.restore import main
from agent.config import CategoryRule
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.backed_up import BackedUp, write_config

RULES = (
    CategoryRule(name="finance", prefix="invoices/"),
    CategoryRule(name="images", glob="*.jpg"),
    CategoryRule(name="tagged-legal", tag="team=legal"),
    CategoryRule(name="text", content_type="text/"),
)


def test_the_first_rule_that_matches_names_the_version():
    categories = Categories(RULES)
    assert categories.name("invoices/cat.jpg", "image/jpeg", {}) == "finance"  # first wins
    assert categories.name("photos/cat.jpg", None, None) == "images"
    assert categories.name("x.bin", "Text/Plain", {"team": "legal"}) == "tagged-legal"
    assert categories.name("x.bin", "TEXT/csv", {}) == "text"
    assert categories.name("x.bin", "application/octet-stream", None) is None
    assert Categories().name("invoices/a", None, None) is None


@pytest.mark.parametrize(
    "rule",
    [
        {"name": "two", "prefix": "a/", "glob": "*.b"},
        {"name": "none"},
        {"name": "bad tag", "tag": "no-equals"},
        {"name": "", "prefix": "a/"},
    ],
)
def test_a_rule_names_exactly_one_test(rule):
    with pytest.raises(ValidationError):
        CategoryRule(**rule)


@pytest.fixture
def backups(aws, volume) -> BackedUp:
    made = BackedUp(aws, volume)
    made.service.categories = Categories(RULES)
    made.put("invoices/2026-11.pdf", b"%PDF")
    made.put("photos/cat.jpg", b"\xff\xd8")
    made.put("misc/readme.bin", b"hello")
    return made


def test_the_category_is_recorded_in_the_journal_and_the_ledger(backups, volume, aws):
    journal = {r.key: r.category for r in Journal(volume.journal_dir).read_all()}
    assert journal == {
        "invoices/2026-11.pdf": "finance",
        "photos/cat.jpg": "images",
        "misc/readme.bin": None,
    }
    ledger = Ledger(aws.dynamodb, TABLE)
    assert {key: ledger.latest(BUCKET, key).category for key in journal} == journal


def run(config_path, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([args[0], "--config", str(config_path), *args[1:]], out=out, err=err)
    return code, out.getvalue()


@pytest.mark.parametrize("source", ["online", "offline"])
def test_list_shows_it_and_find_searches_it(backups, tmp_path, backup_root, source):
    config_path = write_config(tmp_path / "config.yaml", backup_root)
    offline = ["--offline"] if source == "offline" else []
    code, out = run(config_path, "list", *offline)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["KEY", "VERSION", "CATEGORY"]
    assert any(line.startswith("invoices/2026-11.pdf") and "finance" in line for line in lines)
    code, out = run(config_path, "find", "--category", "images", "--json", *offline)
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["photos/cat.jpg"]
    assert json.loads(out.splitlines()[0])["category"] == "images"


def test_the_digest_counts_versions_per_category_since_the_last_one(tmp_path):
    from types import SimpleNamespace

    from agent.monitoring.monitor import Digest
    from agent.stats import Stats

    stats = Stats()
    digest = Digest(stats, tmp_path, lambda root: SimpleNamespace(free=100, percent=50.0))  # type: ignore[arg-type,return-value]
    for name in ("finance", "finance", "images"):
        stats.record_category(name)
    [first] = digest.notice(1.0).examples
    assert first.details["category finance"] == "2"
    assert first.details["category images"] == "1"
    stats.record_category("images")
    [second] = digest.notice(2.0).examples
    assert "category finance" not in second.details
    assert second.details["category images"] == "1"
