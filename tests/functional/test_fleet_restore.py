"""`restore --to-s3 --fleet` (moto): every member restores its share, each key exactly once.

Each member claims a key with a conditional PutItem before its PUT (agent/restore/job.py);
the target bucket is versioned, so a key put twice would show two versions.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import agent
from agent.cli.state_dir import state_dir
from agent.config import queue_name
from agent.fleet.heartbeat import Heartbeat
from agent.fleet.registry import Registry
from agent.pipeline import delivery
from agent.pipeline.backup import Outcome
from agent.records import VersionRecord
from agent.restore.job import (
    EXPIRES_AT,
    JOB_PREFIX,
    KEEP_ALIVE_SLACK,
    LOCK_PREFIX,
    ClaimingTarget,
    JobMismatch,
    RestoreJob,
)
from agent.restore.plan import Item
from agent.restore.targets import S3Target, Status
from agent.runtime.wiring import fleet_identity
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, QUEUE_URL, TABLE
from tests.support.backed_up import write_config
from tests.support.clock import FakeClock
from tests.support.fleet import member_service, member_volume, two_members
from tests.support.lifecycle import created, enable_versioning, put

AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
TARGET = "recovery-area"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def documents(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines()]

    def job(self) -> dict:
        [job] = [d for d in self.documents() if d.get("type") == "job"]
        return job


def _restore(config: Path, *args: str) -> Run:
    from agent.cli.restore import main

    out, err = io.StringIO(), io.StringIO()
    code = main(["restore", "--config", str(config), *args], out=out, err=err)
    return Run(code, out.getvalue(), err.getvalue())


def _beat(aws, volume_id: str, *, clock=None) -> None:
    Heartbeat(
        Registry(aws.dynamodb, TABLE, queue_name(QUEUE_URL)),
        lambda: fleet_identity(volume_id),
        interval_seconds=30,
        clock=clock or (lambda: datetime.now(UTC)),
    ).beat()


def _target_versions(aws) -> dict[str, int]:
    """Key -> how many times it was put into the (versioned) target bucket."""
    found: dict[str, int] = {}
    paginator = aws.s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=TARGET):
        for version in page.get("Versions", []):
            found[version["Key"]] = found.get(version["Key"], 0) + 1
    return found


def _target(aws) -> None:
    aws.s3.create_bucket(Bucket=TARGET)
    aws.s3.put_bucket_versioning(Bucket=TARGET, VersioningConfiguration={"Status": "Enabled"})


def _store(aws, member, key: str, *, duplicate_on=None) -> None:
    response = put(aws, key, key.encode())
    event = created(key, response, len(key), at=AT)
    assert member.process(event).outcome == Outcome.STORED
    if duplicate_on is not None:  # S3 sent the event twice; the other member kept a copy
        with delivery.delivering(delivery.Delivery("dup-" + key, receive_count=1)):
            assert duplicate_on.process(event).outcome == Outcome.ALREADY_DONE


def _member_a_config(aws, tmp_path: Path) -> Path:
    """docs/one.txt backed up by member vol-a, the target bucket made: vol-a's config."""
    enable_versioning(aws)
    _target(aws)
    a = member_volume(tmp_path, "vol-a")
    _store(aws, member_service(aws, a), "docs/one.txt")
    return write_config(tmp_path / "a.yaml", a.root)


def _stored_on_a(aws, tmp_path: Path, key: str = "docs/one.txt") -> VersionRecord:
    """`key` backed up by member vol-a: the version's record."""
    a = member_volume(tmp_path, "vol-a")
    _store(aws, member_service(aws, a), key)
    [record] = Ledger(aws.dynamodb, TABLE).versions(BUCKET, key)
    return record


def test_two_members_restore_their_shares_and_every_key_lands_once(aws, tmp_path):
    enable_versioning(aws)
    _target(aws)
    (a, member_a), (b, member_b) = two_members(aws, tmp_path)
    _store(aws, member_a, "docs/a1.txt")
    _store(aws, member_a, "docs/a2.txt")
    _store(aws, member_b, "docs/b1.txt")
    _store(aws, member_a, "docs/dup.txt", duplicate_on=member_b)  # both volumes hold it
    for volume_id in ("vol-a", "vol-b"):
        _beat(aws, volume_id)
    config_a = write_config(tmp_path / "a.yaml", a.root)
    config_b = write_config(tmp_path / "b.yaml", b.root)
    args = ("--prefix", "docs/", "--to-s3", "--bucket", TARGET, "--fleet")

    first = _restore(config_b, *args, "--json")

    assert first.code == 1, first.out + first.err  # a's keys are not restored yet
    job_id = first.job()["job"]
    assert f"started restore job {job_id}" in first.err
    assert _target_versions(aws) == {"docs/b1.txt": 1, "docs/dup.txt": 1}
    waiting = {e["key"]: e["volume_id"] for e in first.job()["waiting"]}
    assert waiting == {"docs/a1.txt": "vol-a", "docs/a2.txt": "vol-a"}

    second = _restore(config_a, *args, "--job", job_id)

    assert second.code == 0, second.out + second.err
    assert _target_versions(aws) == {  # every key exactly once, fleet-wide
        "docs/a1.txt": 1,
        "docs/a2.txt": 1,
        "docs/b1.txt": 1,
        "docs/dup.txt": 1,
    }
    assert "taken by another member 1" in second.out  # dup.txt: b had claimed it
    assert f"job {job_id}: COMPLETE, 4 of 4 keys done" in second.out

    status = _restore(config_b, *args, "--job", job_id, "--status", "--json")
    job = status.job()
    assert status.code == 0 and job["complete"]
    member_a_id, member_b_id = (fleet_identity(v).member_id for v in ("vol-a", "vol-b"))
    assert job["done_by"] == {member_a_id: 2, member_b_id: 2}
    runs = {m["member_id"]: m for m in job["members"]}
    assert runs[member_a_id]["restored"] == 2 and runs[member_a_id]["taken"] == 1
    assert runs[member_b_id]["restored"] == 2
    assert _target_versions(aws)["docs/dup.txt"] == 1  # the status form put nothing


def test_members_racing_over_versions_both_hold_put_each_key_once(aws, tmp_path):
    """Both volumes hold every version (kept duplicates, as replicas would): run at once,
    the conditional claim alone keeps each key to one PUT (moto's writes made atomic, as
    DynamoDB's are: tests/support/moto_dynamodb_writes.py)."""
    enable_versioning(aws)
    _target(aws)
    (a, member_a), (b, member_b) = two_members(aws, tmp_path)
    keys = [f"docs/f{n:02d}.txt" for n in range(16)]
    for key in keys:
        _store(aws, member_a, key, duplicate_on=member_b)
    args = ("--prefix", "docs/", "--to-s3", "--bucket", TARGET, "--fleet", "--job", "race-1")
    configs = [write_config(tmp_path / f"{v}.yaml", v.root) for v in (a, b)]
    runs: list[Run] = []
    barrier = threading.Barrier(2)

    def member(config: Path) -> None:
        barrier.wait()
        runs.append(_restore(config, *args, "--json"))

    threads = [threading.Thread(target=member, args=(c,)) for c in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert _target_versions(aws) == dict.fromkeys(keys, 1)
    restored = sum(
        1 for run in runs for d in run.documents() if d.get("status") in ("restored", "unchanged")
    )
    taken = sum(1 for run in runs for d in run.documents() if d.get("status") == "taken")
    assert restored == len(keys) and taken == len(keys)  # each key: one PUT, one skip
    assert len(runs) == 2 and any(run.job()["complete"] for run in runs)  # the later one


def test_a_key_whose_volume_has_no_live_member_is_named_and_the_job_fails(aws, tmp_path):
    enable_versioning(aws)
    _target(aws)
    a, c = member_volume(tmp_path, "vol-a"), member_volume(tmp_path, "vol-c")
    _store(aws, member_service(aws, a), "docs/here.txt")
    _store(aws, member_service(aws, c), "docs/gone.txt")
    _beat(aws, "vol-c", clock=lambda: datetime(2026, 11, 1, tzinfo=UTC))  # long silent
    config = write_config(tmp_path / "a.yaml", a.root)

    run = _restore(
        config, "--prefix", "docs/", "--to-s3", "--bucket", TARGET, "--fleet", "--job", "j-1"
    )

    assert run.code == 1
    assert _target_versions(aws) == {"docs/here.txt": 1}
    assert "not held by any live volume" in run.out
    assert "docs/gone.txt: version " in run.out and "volume vol-c" in run.out
    assert "job j-1: INCOMPLETE, 1 of 2 keys done" in run.out


def test_a_member_joining_with_other_arguments_is_refused(aws, tmp_path):
    config = _member_a_config(aws, tmp_path)
    base = ("--to-s3", "--bucket", TARGET, "--fleet", "--job", "j-2")
    assert _restore(config, "--prefix", "docs/", *base).code == 0

    other = _restore(config, "--prefix", "other/", *base)

    assert other.code == 2 and "started with other arguments" in other.err
    missing = _restore(config, "--prefix", "docs/", *base[:-1], "nope", "--status")
    assert missing.code == 2 and "no restore job nope" in missing.err
    assert _restore(config, "--prefix", "docs/", "--to", str(tmp_path), "--fleet").code == 2
    alone = _restore(config, "--prefix", "docs/", "--to-s3", "--job", "j-2", "--status")
    assert alone.code == 2 and "go with --fleet" in alone.err
    offline = _restore(config, "--prefix", "docs/", *base, "--offline")
    assert offline.code == 2 and "not --offline" in offline.err
    nothing = _restore(config, "--prefix", "none/", *base[:-1], "j-3")
    assert nothing.code == 1 and "nothing to restore" in nothing.err


# -- one run of a job per member at a time ----------------------------------------------


def _held_before_its_first_put(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """The first run to claim a key stops after it claimed it and looked at the target (the
    object is not there yet), before its PUT, until `go` is set (`held` says it got there):
    another run started meanwhile sees the same."""
    held, go = threading.Event(), threading.Event()
    claimed = threading.Event()
    claim, head = RestoreJob.claim, S3Target._head

    def claiming(self: RestoreJob, record: VersionRecord) -> bool:
        won = claim(self, record)
        claimed.set()
        return won

    def looking(self: S3Target, bucket: str, key: str) -> dict | None:
        found = head(self, bucket, key)
        if claimed.is_set() and not held.is_set():
            held.set()
            assert go.wait(60)
        return found

    monkeypatch.setattr(RestoreJob, "claim", claiming)
    monkeypatch.setattr(S3Target, "_head", looking)
    return held, go


def test_a_second_run_of_the_job_on_the_same_member_is_refused_and_claims_nothing(
    aws, tmp_path, monkeypatch
):
    """Both runs carry the member's id, and a member retakes its own claims (a run of it that
    died): a second run started meanwhile (twice by hand, cron over a slow run) would pass
    every claim and put every key again — a second S3 version of each."""
    config = _member_a_config(aws, tmp_path)
    args = ("--prefix", "docs/", "--to-s3", "--bucket", TARGET, "--fleet", "--job", "twice")
    held, go = _held_before_its_first_put(monkeypatch)
    runs: list[Run] = []
    first = threading.Thread(target=lambda: runs.append(_restore(config, *args)))
    first.start()
    assert held.wait(60)  # the first run holds docs/one.txt's claim, not put yet
    claims = _puts(aws)

    second = _restore(config, *args)

    go.set()
    first.join(timeout=60)
    assert _target_versions(aws) == {"docs/one.txt": 1}  # one PUT
    assert second.code == 1, second.out + second.err
    assert "restore job twice is already running on this member" in second.err
    assert claims == []  # the refused run wrote nothing to the table: no claim, no run item
    [done] = runs
    assert done.code == 0, done.out + done.err
    again = _restore(config, *args)  # the first run ended: its lock went with it
    assert again.code == 0 and "job twice: COMPLETE" in again.out, again.out + again.err
    assert _target_versions(aws) == {"docs/one.txt": 1}
    assert _lock_files() == []


def _lock_files() -> list[str]:
    directory, _ = state_dir()
    return sorted(p.name for p in directory.glob(f"{LOCK_PREFIX}*"))


# A run of the job on member vol-a (argv: job id, member id) that holds its lock, says so,
# and waits to be killed.
_HOLDER = """
import sys, time
from datetime import UTC, datetime
from agent.cli.restore import _one_run_here
from agent.restore.job import RestoreJob

job = RestoreJob(None, "t", sys.argv[1], member_id=sys.argv[2], volume_id="vol-a",
                 clock=lambda: datetime.now(UTC))
with _one_run_here(job):
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_run_killed_outright_blocks_no_one_and_its_claim_is_retaken_at_once(aws, tmp_path):
    """The lock is the kernel's: it goes with the process, whatever killed it, and the next
    run of the member takes back the key the dead one had claimed (no lease to wait for)."""
    config = _member_a_config(aws, tmp_path)
    [record] = Ledger(aws.dynamodb, TABLE).versions(BUCKET, "docs/one.txt")
    member = fleet_identity("vol-a").member_id
    args = ("--prefix", "docs/", "--to-s3", "--bucket", TARGET, "--fleet", "--job", "killed")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, "killed", member],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(agent.__file__).parents[1],
    )
    try:
        assert holder.stdout is not None
        assert "held\n" in iter(holder.stdout.readline, "")  # after its log lines
        refused = _restore(config, *args)  # another process holds it
        assert refused.code == 1 and "already running on this member" in refused.err
        dead = RestoreJob(
            aws.dynamodb, TABLE, "killed", member_id=member, volume_id="vol-a", clock=AT.now
        )
        assert dead.claim(record)  # claimed, then killed before its PUT
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()

    after = _restore(config, *args)

    assert after.code == 0, after.out + after.err
    assert "restored 1 files" in after.out and "job killed: COMPLETE" in after.out
    assert _target_versions(aws) == {"docs/one.txt": 1}
    assert _lock_files() == []  # the dead run's file, taken and removed by this one


def test_another_member_on_the_same_host_runs_the_job_alongside(aws, tmp_path, monkeypatch):
    """The lock is per member: two agents on one host (off EC2: host/volume ids) are two
    members with claims of their own, and run the same job side by side."""
    enable_versioning(aws)
    _target(aws)
    (a, member_a), (b, member_b) = two_members(aws, tmp_path)
    _store(aws, member_a, "docs/a.txt")
    _store(aws, member_b, "docs/b.txt")
    configs = [write_config(tmp_path / f"{v}.yaml", v.root) for v in (a, b)]
    args = ("--prefix", "docs/", "--to-s3", "--bucket", TARGET, "--fleet", "--job", "side")
    held, go = _held_before_its_first_put(monkeypatch)
    runs: list[Run] = []
    first = threading.Thread(target=lambda: runs.append(_restore(configs[0], *args)))
    first.start()
    assert held.wait(60)

    second = _restore(configs[1], *args)

    go.set()
    first.join(timeout=60)
    assert "already running" not in second.err, second.err
    assert "restored 1 files" in second.out and "restored 1 files" in runs[0].out
    assert _target_versions(aws) == {"docs/a.txt": 1, "docs/b.txt": 1}


# -- the claim itself ---------------------------------------------------------------------


def test_a_claim_is_held_for_its_lease_then_retaken_and_done_is_final(aws, tmp_path):
    enable_versioning(aws)
    record = _stored_on_a(aws, tmp_path)
    clock = FakeClock(AT)

    def job(member: str) -> RestoreJob:
        return RestoreJob(
            aws.dynamodb,
            TABLE,
            "lease-1",
            member_id=member,
            volume_id="vol-" + member,
            clock=clock,
            lease=timedelta(minutes=10),
        )

    dead, live = job("x"), job("y")
    assert dead.claim(record)  # then x dies before its PUT
    assert not live.claim(record)  # within the lease: x may still be putting it
    clock.advance(minutes=11)
    assert live.claim(record)  # the lease ran out: taken over
    assert not dead.finish(record)  # x's late finish does not overwrite y's claim
    assert live.finish(record)
    assert not dead.claim(record)  # done is never taken again, by anyone
    assert not live.claim(record)
    [claim] = live.items()[0].values()
    assert (claim.state, claim.member_id) == ("done", "y")


def test_a_failed_claim_is_retaken_at_once(aws, tmp_path):
    enable_versioning(aws)
    record = _stored_on_a(aws, tmp_path)
    clock = FakeClock(AT)
    x = RestoreJob(aws.dynamodb, TABLE, "f-1", member_id="x", volume_id="vol-x", clock=clock)
    y = RestoreJob(aws.dynamodb, TABLE, "f-1", member_id="y", volume_id="vol-y", clock=clock)
    assert x.claim(record)
    assert x.finish(record, error="S3 PutObject: AccessDenied")
    [failed] = y.items()[0].values()
    assert failed.state == "failed" and failed.error == "S3 PutObject: AccessDenied"
    assert y.claim(record)


def test_a_long_upload_renews_its_claim_so_no_other_member_takes_it_over(aws, tmp_path):
    enable_versioning(aws)
    record = _stored_on_a(aws, tmp_path, "docs/big.bin")
    clock = FakeClock(AT)

    def job(member: str) -> RestoreJob:
        return RestoreJob(
            aws.dynamodb,
            TABLE,
            "long-1",
            member_id=member,
            volume_id="vol-" + member,
            clock=clock,
            lease=timedelta(minutes=10),
        )

    other = job("y")
    taken_meanwhile: list[bool] = []

    class SlowUpload:  # a multipart upload: a part every 4 minutes, 40 minutes in all
        def destination(self, item: Item) -> str:
            return "s3://recovery-area/" + item.key

        def check(self, item: Item) -> str | None:
            return None

        def restore(self, item: Item, on_bytes) -> Status:
            for _part in range(10):
                clock.advance(minutes=4)
                on_bytes(16 << 20)
                taken_meanwhile.append(other.claim(item.record))
            return Status.RESTORED

    target = ClaimingTarget(SlowUpload(), job("x"))

    assert target.restore(Item(record), lambda _n: None) is Status.RESTORED
    assert taken_meanwhile == [False] * 10  # the lease never ran out under the upload
    [claim] = other.items()[0].values()
    assert (claim.state, claim.member_id) == ("done", "x")


# -- expiry (DynamoDB TTL on expires_at) ----------------------------------------------------


def _items(aws, job_id: str) -> dict[str, dict]:
    """The job's partition as stored, expired items too (moto never deletes them)."""
    found = aws.dynamodb.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": JOB_PREFIX + job_id}},
    )["Items"]
    return {item["sk"]["S"]: item for item in found}


def test_every_item_of_a_job_expires_thirty_days_after_its_last_write(aws, tmp_path):
    enable_versioning(aws)
    record = _stored_on_a(aws, tmp_path)
    clock = FakeClock(AT)
    job = RestoreJob(aws.dynamodb, TABLE, "t-1", member_id="x", volume_id="vol-a", clock=clock)
    job.open({"prefix": "docs/"})
    assert job.claim(record)
    clock.advance(hours=2)
    assert job.finish(record)
    job.record_run({"restored": 1})

    items = _items(aws, "t-1")
    finished = AT + timedelta(days=30, hours=2)
    kept_alive = finished + KEEP_ALIVE_SLACK  # the job outlives what is written under it
    assert {sk: int(item[EXPIRES_AT]["N"]) for sk, item in items.items()} == {
        "job": int(kept_alive.timestamp()),
        "key#docs/one.txt": int(finished.timestamp()),  # the claim's last write: done
        "member#x": int(finished.timestamp()),
    }


def _member(aws, job_id: str, member: str, clock: FakeClock) -> RestoreJob:
    return RestoreJob(
        aws.dynamodb, TABLE, job_id, member_id=member, volume_id=f"vol-{member}", clock=clock
    )


def _puts(aws) -> list[str]:
    """The sort key of every item PutItem writes from now on (the job's is "job")."""
    written: list[str] = []
    aws.dynamodb.meta.events.register(
        "provide-client-params.dynamodb.PutItem",
        lambda params, **_: written.append(params["Item"]["sk"]["S"]),
    )
    return written


def _job_outlives_its_items(aws, job_id: str) -> None:
    items = _items(aws, job_id)
    job = int(items.pop("job")[EXPIRES_AT]["N"])
    assert all(job >= int(item[EXPIRES_AT]["N"]) for item in items.values())


def test_a_job_that_runs_longer_than_its_retention_is_kept_alive_by_its_claims(aws, tmp_path):
    """Members come back to a job for 90 days (three times RETENTION), a key every 10 days:
    the job item moves forward with them, never expires, and a member joining on day 90
    with other arguments is refused (before: the job expired on day 30 and its id started
    afresh with the new arguments, beside claims of the old job still live)."""
    enable_versioning(aws)
    first = _stored_on_a(aws, tmp_path)
    records = [dataclasses.replace(first, key=f"docs/{n}.txt") for n in range(9)]
    clock = FakeClock(AT)
    x = _member(aws, "long-1", "x", clock)
    assert x.open({"prefix": "docs/"})
    writes = _puts(aws)

    for record in records:
        clock.advance(days=10)
        assert x.claim(record) and x.finish(record)
        _job_outlives_its_items(aws, "long-1")

    assert writes.count("job") == len(records)  # once a visit (10 days apart), never a claim
    y = _member(aws, "long-1", "y", clock)
    with pytest.raises(JobMismatch):
        y.open({"prefix": "other/"})
    assert not y.open({"prefix": "docs/"})  # joined, not started afresh
    claims, _runs = y.items()
    assert len(claims) == 3  # the last 30 days' claims: the older ones expired on their own


def test_many_claims_in_a_day_rewrite_the_job_item_once(aws, tmp_path):
    enable_versioning(aws)
    record = _stored_on_a(aws, tmp_path)
    clock = FakeClock(AT)
    x = _member(aws, "busy-1", "x", clock)
    y = _member(aws, "busy-1", "y", clock)
    assert x.open({"prefix": "docs/"}) and not y.open({"prefix": "docs/"})
    writes = _puts(aws)

    for _ in range(24 * 4):  # a claim renewed every 15 minutes for a day, by both members
        clock.advance(minutes=15)
        assert x.claim(record) and x.finish(record, error="S3 PutObject: SlowDown")
        assert y.claim(record) and y.finish(record, error="S3 PutObject: SlowDown")
        _job_outlives_its_items(aws, "busy-1")

    assert writes.count("job") <= 2  # x moves it once; y finds it moved (a failed put)


def test_a_job_that_expired_under_a_running_member_starts_again_with_its_arguments(aws, tmp_path):
    enable_versioning(aws)
    record = _stored_on_a(aws, tmp_path)
    clock = FakeClock(AT)
    x = _member(aws, "idle-1", "x", clock)
    assert x.open({"prefix": "docs/"})
    clock.advance(days=31)  # nothing written under it: the job and its claims expired

    assert x.claim(record)

    _job_outlives_its_items(aws, "idle-1")
    assert json.loads(_items(aws, "idle-1")["job"]["arguments"]["S"]) == {"prefix": "docs/"}
    y = _member(aws, "idle-1", "y", clock)
    with pytest.raises(JobMismatch):
        y.open({"prefix": "other/"})


def test_an_expired_item_is_as_absent_until_ttl_deletes_it(aws, tmp_path):
    """TTL deletes within days: until then the reads leave an expired item out and the
    conditional writes take it as absent (AWS: "Working with expired items")."""
    enable_versioning(aws)
    record = _stored_on_a(aws, tmp_path)
    clock = FakeClock(AT)
    x = _member(aws, "t-2", "x", clock)
    y = _member(aws, "t-2", "y", clock)
    assert x.open({"prefix": "docs/"})
    assert x.claim(record) and x.finish(record)
    assert not y.claim(record)  # done is final while it lasts

    clock.advance(days=30)

    assert x.items() == ({}, [])
    assert "job" in _items(aws, "t-2")  # still stored (moto, like TTL for a while)
    assert y.open({"prefix": "other/"})  # the id starts afresh, with its own arguments
    assert y.claim(record)  # the expired done claim no longer holds the key
    clock.advance(days=30)
    assert not y.finish(record)  # nor does an expired claim let its member finish it
    assert not y.renew(record)


def test_status_ignores_an_expired_job_and_its_id_starts_afresh(aws, tmp_path):
    config = _member_a_config(aws, tmp_path)
    args = ("--prefix", "docs/", "--to-s3", "--bucket", TARGET, "--fleet", "--job", "old-1")
    [record] = Ledger(aws.dynamodb, TABLE).versions(BUCKET, "docs/one.txt")
    long_ago = FakeClock(datetime.now(UTC) - timedelta(days=31))  # its items: expired
    old = RestoreJob(aws.dynamodb, TABLE, "old-1", member_id="x", volume_id="vol-a", clock=long_ago)
    assert old.open({"prefix": "other/"})
    assert old.claim(record) and old.finish(record, error="S3 PutObject: AccessDenied")

    gone = _restore(config, *args, "--status")

    assert gone.code == 2 and "no restore job old-1" in gone.err
    assert _restore(config, *args).code == 0  # not "started with other arguments"
    today = _restore(config, *args, "--status", "--json")
    assert today.code == 0 and today.job()["failed"] == [] and today.job()["done"] == 1
