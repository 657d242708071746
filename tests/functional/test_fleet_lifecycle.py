"""Retention, gc and verify in a fleet (moto): each member acts on its own volume's records.

Before: a member's retention expired the ledger records of versions another volume holds
(the expiry note went to its own journal, so the holder's gc never freed the copy, and
the holder's journal still named the version), retention under pressure expired other
volumes' versions (freeing nothing on its own disk), and verify reported every other
volume's copy as missing.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

from agent.cli.agent import main as agent_main
from agent.cli.common import ExitCode
from agent.cli.restore import main as restore_main
from agent.config import load_config
from agent.lifecycle.gc import GarbageCollector
from agent.lifecycle.retention import Retention
from agent.pipeline.backup import Outcome
from agent.pipeline.delivery import Delivery, delivering
from agent.runtime.wiring import lifecycle_context, pressure_retention
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import BUCKET, TABLE
from tests.support.backed_up import write_config
from tests.support.clock import FakeClock
from tests.support.fleet import two_members
from tests.support.lifecycle import created, enable_versioning, put

AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
KEY = "docs/report.txt"


def _versions_on(aws, tmp_path):
    """v1 and v2 of KEY backed up by member b, v3 (current) by member a."""
    enable_versioning(aws)
    (a, member_a), (b, member_b) = two_members(aws, tmp_path)
    members = {"a": member_a, "b": member_b}
    for n, holder in enumerate("bba"):
        body = f"version {n + 1}".encode()
        response = put(aws, KEY, body)
        event = created(KEY, response, len(body), at=AT + timedelta(hours=n), sequencer=f"{n:04X}")
        members[holder].process(event)
    return a, b


def _tokens(aws) -> dict[str, str]:
    """version token -> the volume holding it, as the ledger has them."""
    return {r.version_token: r.volume_id for r in Ledger(aws.dynamodb, TABLE).versions(BUCKET, KEY)}


def _notes(volume: Volume) -> list[str]:
    lines = []
    for path in sorted(volume.journal_dir.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["version_token"] for line in lines if line.get("kind") == "expired"]


def _collect(volume: Volume):
    return GarbageCollector(
        volume=volume,
        journal=Journal(volume.journal_dir),
        grace_period=timedelta(hours=1),
        clock=FakeClock(datetime.now(UTC) + timedelta(hours=2)),
    ).run_once()


def test_retention_on_one_member_expires_only_the_versions_its_volume_holds(aws, tmp_path):
    a, b = _versions_on(aws, tmp_path)
    before = _tokens(aws)
    assert sorted(before.values()) == ["vol-a", "vol-b", "vol-b"]
    config_a = write_config(tmp_path / "a.yaml", a.root, retention={"keep_last_versions": 1})
    config_b = write_config(tmp_path / "b.yaml", b.root, retention={"keep_last_versions": 1})

    assert agent_main(["retention", "--config", str(config_a)]) == ExitCode.OK

    assert _tokens(aws) == before  # b's versions are b's to expire: its journal names them
    assert _notes(a) == []

    assert agent_main(["retention", "--config", str(config_b)]) == ExitCode.OK

    assert list(_tokens(aws).values()) == ["vol-a"]  # "the newest 1", fleet-wide
    assert sorted(_notes(b)) == sorted(t for t, v in before.items() if v == "vol-b")
    assert _collect(b).removed == 2  # b's journal forgot them: its gc frees both copies
    assert _collect(a).removed == 0  # a's current version stays


def test_retention_under_pressure_expires_only_this_volumes_versions(aws, tmp_path):
    a, _b = _versions_on(aws, tmp_path)
    before = _tokens(aws)
    config = load_config(write_config(tmp_path / "a.yaml", a.root, retention={"when_full": {}}))
    ctx = lifecycle_context(config, aws, a, "vol-a")  # as the daemon wires it

    report = pressure_retention(ctx).run(needed_bytes=1 << 30)

    assert report.removed == []  # a holds only the current version: nothing of its to free
    assert _tokens(aws) == before  # before: b's two versions expired, freeing nothing here


def test_verify_on_a_member_checks_its_own_copies_and_counts_the_others(aws, tmp_path):
    a, _b = _versions_on(aws, tmp_path)
    config = write_config(tmp_path / "a.yaml", a.root)
    out, err = io.StringIO(), io.StringIO()

    code = restore_main(["verify", "--config", str(config), "--json"], out=out, err=err)

    summary = json.loads(out.getvalue().splitlines()[-1])
    assert code == ExitCode.OK, out.getvalue()  # before: b's two copies "missing" here
    assert (summary["versions"], summary["problems"]) == (1, 0)
    assert summary["held_by_other_volumes"] == 2


def test_a_redelivery_never_recreates_an_item_another_members_retention_deleted(aws, tmp_path):
    """Member a records a version and dies before deleting its message; the message comes
    back to b, whose look-up finds the version; a's retention then expires it (its journal
    forgets it, the item and the key's LATEST go). b's "LATEST may still need advancing"
    was a whole `record`: its PutItem recreated the item naming vol-a (whose gc then frees
    the copy) and LATEST with it (the fleet review, 2026-12-02)."""
    enable_versioning(aws)
    (a, member_a), (_b, member_b) = two_members(aws, tmp_path)
    response = put(aws, "report.pdf", b"quarterly figures")
    event = created("report.pdf", response, 17, at=AT)
    assert member_a.process(event).outcome == Outcome.STORED
    ledger = Ledger(aws.dynamodb, TABLE)
    retention_a = Retention(
        ledger=ledger, journal=Journal(a.journal_dir), policy=None, buckets=[BUCKET],
        volume_id="vol-a",
    )  # fmt: skip
    looked_up = member_b.ledger.get_version

    def look_up_then_expire(bucket: str, key: str, token: str):  # type: ignore[no-untyped-def]
        known = looked_up(bucket, key, token)
        if known is not None and known.version_token == event.version_token:
            assert retention_a.expire(known, AT)  # a's journal first, then the item
            ledger.delete_latest(bucket, key, known.version_token)  # the whole key expired
        return known

    member_b.ledger.get_version = look_up_then_expire  # type: ignore[method-assign]
    with delivering(Delivery("m-1", receive_count=2)):
        assert member_b.process(event).outcome == Outcome.ALREADY_DONE

    assert list(Journal(a.journal_dir).read_all()) == []
    assert ledger.get_version(BUCKET, "report.pdf", event.version_token) is None
    assert ledger.latest(BUCKET, "report.pdf") is None
