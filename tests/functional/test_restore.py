"""Given objects backed up by the real BackupService, `backup-restore` brings them back.

Runs the CLI in-process against in-process moto (`mock_aws`), files in tmp_path.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import shutil
import signal
import threading
import tracemalloc
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import agent.cli.restore as restore_cli
from agent.cli import agent as agent_cli
from agent.cli.restore import first_interrupt_sets, main
from agent.restore.plan import RestoreScope, place, plan
from agent.restore.restorer import Restorer
from agent.restore.source import LedgerSource, Selector
from agent.restore.targets import SHA256_METADATA, DirectoryTarget, S3Target, Status
from agent.restore.tree import RestoreRefused
from agent.storage import volume as volume_module
from agent.storage.direct import DirectWriter
from agent.storage.ledger import Ledger
from agent.storage.volume import WritebackAsYouGo
from tests.support.aws import BUCKET, REGION, TABLE
from tests.support.aws_hooks import record_calls
from tests.support.backed_up import T0, BackedUp, write_config

AWKWARD_KEYS = [
    "with space/and more spaces.txt",
    "ünïcødé/✓ data.csv",
    "plus+sign+.txt",
    "percent%2F.txt",
    "../../x",
    "/abs",
    "a//b",
    "dir/./y",
    "k" * 1024,
    "a",
    "a/b",
]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]

    def files(self) -> dict[str, dict[str, Any]]:
        return {line["key"]: line for line in self.json() if line.get("type") == "file"}

    def summary(self) -> dict[str, Any]:
        return next(line for line in self.json() if line.get("type") == "summary")


@pytest.fixture
def backups(aws, volume) -> BackedUp:
    return BackedUp(aws, volume)


@pytest.fixture
def config_path(tmp_path, backup_root) -> Path:
    return write_config(tmp_path / "config.yaml", backup_root)


@pytest.fixture
def restore(config_path):
    def run(command: str, *args: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        code = main([command, "--config", str(config_path), *args], out=out, err=err)
        return Run(code, out.getvalue(), err.getvalue())

    return run


def _tree(directory: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f), directory)
        for d, _dirs, files in os.walk(directory)
        for f in files
    }


def _flip_a_byte(volume, sha256: str) -> None:
    path = volume.copy_path(sha256)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# -- awkward keys --------------------------------------------------------------------


def test_awkward_keys_round_trip_inside_the_target_directory(backups, restore, tmp_path):
    bodies = {key: f"content of {key!r}\n".encode() * 50 for key in AWKWARD_KEYS}
    for key, body in bodies.items():
        backups.put(key, body)
    target = tmp_path / "out" / "restore"

    result = restore("restore", "--all", "--to", str(target), "--json")

    assert result.code == 0, result.err
    files = result.files()
    assert set(files) == set(AWKWARD_KEYS)
    for key, line in files.items():
        path = Path(line["destination"])
        assert path.resolve().is_relative_to(target.resolve()), key
        assert path.read_bytes() == bodies[key], key
        assert line["status"] == "restored"
    assert len(_tree(target)) == len(AWKWARD_KEYS)  # nothing else, no temp files
    assert os.listdir(tmp_path / "out") == ["restore"]  # nothing escaped upwards
    renamed = {key for key, line in files.items() if line["renamed"]}
    assert renamed == {"../../x", "/abs", "a//b", "dir/./y", "k" * 1024, "a"}
    assert result.summary()["renamed"] == 6
    assert (target / "a" / "b").read_bytes() == bodies["a/b"]  # the directory wins
    assert (target / "%2E%2E" / "%2E%2E" / "x").read_bytes() == bodies["../../x"]


def test_renamed_keys_are_listed_in_the_readable_summary(backups, restore, tmp_path):
    backups.put("../../x", b"escape attempt")
    backups.put("a", b"file")
    backups.put("a/b", b"under a")

    result = restore("restore", "--all", "--to", str(tmp_path / "out"))

    assert result.code == 0, result.err
    assert "renamed keys" in result.out
    assert "../../x → %2E%2E/%2E%2E/x  (escaped)" in result.out
    assert "a → a~" in result.out and "(collision)" in result.out
    assert "restored 3 files" in result.out


# -- selecting versions --------------------------------------------------------------


@pytest.fixture
def history(backups) -> dict[str, str]:
    """doc: v1 10:00, v2 11:00, deleted 12:00; early: 10:00, deleted 10:30; late: 11:30."""
    hour = timedelta(hours=1)
    versions = {
        "doc-v1": backups.put("doc", b"doc version 1", T0 + hour),
        "early": backups.put("early", b"early bird", T0 + hour + timedelta(minutes=1)),
    }
    backups.delete("early", T0 + hour + timedelta(minutes=30))
    versions["doc-v2"] = backups.put("doc", b"doc version 2", T0 + 2 * hour)
    versions["late"] = backups.put("late", b"late comer", T0 + 2 * hour + timedelta(minutes=30))
    backups.delete("doc", T0 + 3 * hour)
    return versions


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("2026-11-01T10:45:00Z", {"doc": b"doc version 1"}),
        ("2026-11-01T10:15:00Z", {"doc": b"doc version 1", "early": b"early bird"}),
        ("2026-11-01T11:45:00+00:00", {"doc": b"doc version 2", "late": b"late comer"}),
        ("2026-11-01 12:30", {"late": b"late comer"}),
        ("2026-11-01T08:00:00Z", {}),
    ],
)
def test_point_in_time_restores_what_the_bucket_held(history, restore, tmp_path, at, expected):
    target = tmp_path / "out"

    result = restore("restore", "--all", "--at", at, "--to", str(target), "--json")

    restored = {key: Path(line["destination"]).read_bytes() for key, line in result.files().items()}
    assert restored == expected
    assert result.code == (0 if expected else 1)


def test_latest_skips_keys_deleted_in_s3_unless_asked(history, restore, tmp_path):
    plain = restore("restore", "--all", "--to", str(tmp_path / "plain"), "--json")
    both = restore("restore", "--all", "--include-deleted", "--to", str(tmp_path / "all"), "--json")

    assert plain.code == 0 and set(plain.files()) == {"late"}
    assert {s["key"] for s in plain.summary()["skipped"]} == {"doc", "early"}
    assert both.code == 0
    assert (tmp_path / "all" / "doc").read_bytes() == b"doc version 2"
    assert both.files()["doc"]["deleted_in_s3"] is True


def test_one_key_by_name_or_version(history, restore, tmp_path):
    by_name = restore("restore", "--key", "doc", "--to", str(tmp_path / "a"))
    by_version = restore(
        "restore", "--key", "doc", "--version", history["doc-v1"], "--to", str(tmp_path / "b")
    )
    unknown = restore("restore", "--key", "nope", "--to", str(tmp_path / "c"))

    assert by_name.code == 0 and (tmp_path / "a" / "doc").read_bytes() == b"doc version 2"
    assert by_version.code == 0 and (tmp_path / "b" / "doc").read_bytes() == b"doc version 1"
    assert unknown.code == 1 and "nope: no backup of this key" in unknown.out


def test_restored_file_carries_the_object_time(history, restore, tmp_path):
    restore("restore", "--key", "late", "--to", str(tmp_path))

    stamp = (tmp_path / "late").stat().st_mtime
    assert stamp == (T0 + timedelta(hours=2, minutes=30)).timestamp()


# -- integrity -----------------------------------------------------------------------


def test_a_flipped_byte_fails_that_file_only(backups, volume, restore, tmp_path):
    backups.put("good.txt", b"good bytes " * 20000)
    version = backups.put("bad.txt", os.urandom(1000) + b"bad bytes " * 20000)
    bad = Ledger(backups.clients.dynamodb, TABLE).latest(BUCKET, "bad.txt")
    _flip_a_byte(volume, bad.sha256)
    target = tmp_path / "out"

    result = restore("restore", "--all", "--to", str(target))

    assert result.code == 1
    assert (target / "good.txt").read_bytes() == b"good bytes " * 20000
    assert _tree(target) == {"good.txt"}  # no partial bad.txt, no temp file
    assert f"bad.txt: s3://{BUCKET}/bad.txt (version {version}): stored copy" in result.out
    assert "is corrupt" in result.out
    assert "restored 1 files" in result.out and "failed 1" in result.out


def test_verify_reports_corrupt_and_missing_copies(backups, volume, restore):
    backups.put("fine.txt", b"fine " * 1000)
    backups.put("flipped.txt", b"flipped " * 1000)
    backups.put("lost.txt", b"lost " * 1000)
    ledger = Ledger(backups.clients.dynamodb, TABLE)
    _flip_a_byte(volume, ledger.latest(BUCKET, "flipped.txt").sha256)
    volume.copy_path(ledger.latest(BUCKET, "lost.txt").sha256).unlink()

    readable = restore("verify")
    as_json = restore("verify", "--json")

    assert readable.code == 1 and as_json.code == 1
    assert "flipped.txt (version" in readable.out and "is corrupt" in readable.out
    assert "lost.txt (version" in readable.out and "is missing" in readable.out
    assert "verified 3 of 3 stored copies (3 versions" in readable.out
    problems = {line["key"]: line for line in as_json.json() if line["type"] == "problem"}
    assert set(problems) == {"flipped.txt", "lost.txt"}
    assert as_json.summary()["problems"] == 2


def test_verify_passes_a_clean_volume_and_samples(backups, restore):
    for index in range(8):
        backups.put(f"file-{index}", f"body {index}".encode() * 100)

    full = restore("verify", "--json")
    sample = restore("verify", "--sample", "0.25", "--seed", "7", "--json")
    prefixed = restore("verify", "--prefix", "file-1", "--json")

    assert full.code == 0 and full.summary()["checked"] == 8
    assert sample.code == 0 and sample.summary()["checked"] == 2
    assert prefixed.summary()["copies"] == 1


# -- dry run and overwriting ---------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(backups, restore, tmp_path):
    backups.put("one.txt", b"1")
    backups.put("../two.txt", b"2")
    target = tmp_path / "out"

    result = restore("restore", "--all", "--to", str(target), "--dry-run")

    assert result.code == 0
    assert not target.exists()
    assert "dry run: nothing written" in result.out
    assert f"one.txt → {target}/one.txt" in result.out
    assert f"../two.txt → {target}/%2E%2E/two.txt" in result.out
    assert "planned 2 files" in result.out


def test_existing_files_are_not_overwritten_without_the_flag(backups, restore, tmp_path):
    backups.put("doc.txt", b"from the backup")
    target = tmp_path / "out"
    target.mkdir()
    (target / "doc.txt").write_bytes(b"local edits")

    refused = restore("restore", "--all", "--to", str(target))
    assert refused.code == 1
    assert "exists with other content; use --overwrite" in refused.out
    assert (target / "doc.txt").read_bytes() == b"local edits"

    dry = restore("restore", "--all", "--to", str(target), "--dry-run")
    assert "[exists; needs --overwrite]" in dry.out

    replaced = restore("restore", "--all", "--to", str(target), "--overwrite")
    assert replaced.code == 0
    assert (target / "doc.txt").read_bytes() == b"from the backup"

    again = restore("restore", "--all", "--to", str(target), "--json")
    assert again.code == 0 and again.files()["doc.txt"]["status"] == "unchanged"


def test_a_symlink_inside_the_target_is_not_followed(backups, restore, tmp_path):
    backups.put("sub/file.txt", b"data")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "sub").symlink_to(outside)

    result = restore("restore", "--all", "--to", str(target))

    assert result.code == 1 and "is a symlink" in result.out
    assert list(outside.iterdir()) == []


# -- offline, snapshots and reindex --------------------------------------------------


def test_offline_restore_and_reindex_after_the_table_was_deleted(
    history, restore, config_path, aws, tmp_path, capsys
):
    online_list = restore("list", "--versions", "--deleted", "--json").json()
    aws.dynamodb.delete_table(TableName=TABLE)

    online = restore("restore", "--all", "--to", str(tmp_path / "online"))
    assert online.code == 1 and "--offline" in online.err

    offline = restore(
        "restore", "--all", "--include-deleted", "--offline", "--to", str(tmp_path / "o")
    )
    assert offline.code == 0, offline.err
    assert (tmp_path / "o" / "doc").read_bytes() == b"doc version 2"
    assert restore("list", "--versions", "--deleted", "--json", "--offline").json() == online_list

    assert agent_cli.main(["reindex", "--config", str(config_path)]) == 0
    assert "(table created): 6 journal records, 6 added" in capsys.readouterr().out
    assert restore("list", "--versions", "--deleted", "--json").json() == online_list
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "doc")
    assert latest is not None and latest.deleted

    assert agent_cli.main(["reindex", "--config", str(config_path)]) == 0
    assert "6 journal records, 0 added, 6 already known" in capsys.readouterr().out


def test_offline_restore_from_a_mounted_snapshot(history, restore, backup_root, tmp_path):
    snapshot = tmp_path / "snapshot"
    shutil.copytree(backup_root, snapshot)
    shutil.rmtree(backup_root / "objects")
    shutil.rmtree(backup_root / "journal")

    from_volume = restore("restore", "--key", "late", "--offline", "--to", str(tmp_path / "a"))
    from_snapshot = restore(
        "restore",
        "--key",
        "late",
        "--offline",
        "--root",
        str(snapshot),
        "--to",
        str(tmp_path / "b"),
    )

    assert from_volume.code == 1
    assert from_snapshot.code == 0, from_snapshot.out
    assert (tmp_path / "b" / "late").read_bytes() == b"late comer"


def test_unready_volume_is_a_configuration_error(history, restore, tmp_path):
    result = restore("restore", "--all", "--offline", "--root", str(tmp_path), "--to", "x")

    assert result.code == 3 and "not ready" in result.err  # the exit code both CLIs share


# -- listing -------------------------------------------------------------------------


def test_list_json_lines_carry_the_documented_fields(history, restore):
    current = restore("list", "--json").json()
    with_deleted = {row["key"]: row for row in restore("list", "--deleted", "--json").json()}
    versions = restore("list", "--versions", "--deleted", "--prefix", "doc", "--json").json()

    assert [row["key"] for row in current] == ["late"]
    fields = {"bucket", "key", "version_id", "size", "stored_size", "sha256", "event_time"}
    assert fields | {"backup_time", "deleted", "version_token"} <= set(current[0])
    assert current[0]["size"] == len(b"late comer") and current[0]["deleted"] is False
    assert with_deleted["doc"]["deleted"] is True
    assert with_deleted["doc"]["version_id"] == history["doc-v2"]
    assert with_deleted["doc"]["deleted_at"].startswith("2026-11-01T12:00")
    assert [(v["version_id"] is not None, v["deleted"]) for v in versions] == [
        (True, False),
        (True, False),
        (True, True),
    ]


def test_list_table_is_readable(history, restore):
    result = restore("list", "--deleted")

    lines = result.out.splitlines()
    assert lines[0].split() == [
        "KEY",
        "VERSION",
        "SIZE",
        "EVENT",
        "TIME",
        "BACKED",
        "UP",
        "HOLDER",
        "DELETED",
    ]
    assert all("vol-test" in line for line in lines[1:-1])  # the volume holding each copy
    assert any(line.startswith("doc ") and line.rstrip().endswith("deleted") for line in lines)
    assert lines[-1] == "3 keys"


# -- back into S3 --------------------------------------------------------------------


def test_to_s3_puts_a_deleted_object_back(history, restore, aws):
    result = restore("restore", "--key", "doc", "--to-s3")

    assert result.code == 0, result.out
    body = aws.s3.get_object(Bucket=BUCKET, Key="doc")["Body"].read()
    assert body == b"doc version 2"


def test_to_s3_never_overwrites_a_newer_object_without_the_flag(history, restore, aws):
    aws.s3.put_object(Bucket=BUCKET, Key="late", Body=b"written after the backup")

    refused = restore("restore", "--key", "late", "--to-s3")
    assert refused.code == 1 and "holds a newer object" in refused.out
    assert aws.s3.get_object(Bucket=BUCKET, Key="late")["Body"].read() == (
        b"written after the backup"
    )

    forced = restore("restore", "--key", "late", "--to-s3", "--overwrite")
    assert forced.code == 0
    assert aws.s3.get_object(Bucket=BUCKET, Key="late")["Body"].read() == b"late comer"

    again = restore("restore", "--key", "late", "--to-s3", "--json")
    assert again.code == 0 and again.files()["late"]["status"] == "unchanged"


def test_to_s3_another_bucket_and_prefix(history, restore, aws):
    aws.s3.create_bucket(Bucket="recovery-area")

    result = restore(
        "restore", "--all", "--include-deleted", "--to-s3",
        "--bucket", "recovery-area", "--to-prefix", "restored/",
    )  # fmt: skip

    assert result.code == 0, result.out
    listed = aws.s3.list_objects_v2(Bucket="recovery-area")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["restored/doc", "restored/early", "restored/late"]


OWNER = "123456789012"  # moto's account: the backed-up bucket's real owner


def test_expected_bucket_owner_goes_to_the_backed_up_bucket_only(
    history, aws, tmp_path, backup_root, monkeypatch
):
    """aws.expected_bucket_owner names the backed-up buckets' account; S3 answers 403 when a
    bucket's owner differs (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-owner-condition.html),
    so a recovery bucket, perhaps in another account, must not be sent it."""
    path = write_config(
        tmp_path / "owner.yaml",
        backup_root,
        aws={"region": REGION, "expected_bucket_owner": OWNER},
        restore={"workers": 1, "recovery_buckets": ["recovery-area"]},
    )
    monkeypatch.setattr(restore_cli, "build_clients", lambda _config: aws)
    aws.s3.create_bucket(Bucket="recovery-area")
    calls = record_calls(aws.s3)

    def run(*args: str) -> int:
        out, err = io.StringIO(), io.StringIO()
        return main(["restore", "--config", str(path), *args], out=out, err=err)

    assert run("--key", "late", "--to-s3", "--bucket", "recovery-area") == 0
    elsewhere = [c for c in calls.calls if c.params.get("Bucket") == "recovery-area"]
    assert {c.operation for c in elsewhere} >= {"HeadObject", "PutObject"}
    assert all("ExpectedBucketOwner" not in c.params for c in elsewhere)

    assert run("--key", "late", "--to-s3", "--to-prefix", "again/") == 0
    home = [c for c in calls.calls if c.params.get("Bucket") == BUCKET]
    assert home and all(c.params.get("ExpectedBucketOwner") == OWNER for c in home)


def test_to_s3_an_older_object_is_replaced_only_with_the_flag_and_says_so(
    backups, volume, aws, monkeypatch
):
    """It was refused without --overwrite with the words "it will be replaced", and --dry-run
    said the same (a review, 2026-12-02). Older as S3 tells it: a multipart upload's
    LastModified is when the upload began, so older is no reason to replace silently."""
    backups.put("old.txt", b"the backed-up bytes")
    aws.s3.put_object(Bucket=BUCKET, Key="old.txt", Body=b"something else")
    source = LedgerSource(Ledger(aws.dynamodb, TABLE))
    (item,) = plan(source, BUCKET, RestoreScope(key="old.txt"), Selector()).items
    head = S3Target._head

    def older(self: S3Target, bucket: str, key: str) -> dict[str, Any] | None:
        found = head(self, bucket, key)
        return None if found is None else {**found, "LastModified": T0 - timedelta(days=1)}

    monkeypatch.setattr(S3Target, "_head", older)
    when = f"(modified {(T0 - timedelta(days=1)).isoformat()})"
    keeping = S3Target(aws.s3, volume)
    assert keeping.check(item) == f"holds an older object {when}; needs --overwrite"
    with pytest.raises(RestoreRefused, match=r"older object .*; needs --overwrite$"):
        keeping.restore(item, lambda _bytes: None)
    assert aws.s3.get_object(Bucket=BUCKET, Key="old.txt")["Body"].read() == b"something else"

    replacing = S3Target(aws.s3, volume, overwrite=True)
    assert replacing.check(item) == f"holds an older object {when}; would be replaced"
    assert replacing.restore(item, lambda _bytes: None) is Status.RESTORED
    assert aws.s3.get_object(Bucket=BUCKET, Key="old.txt")["Body"].read() == b"the backed-up bytes"


def _late_item(backups: Any, aws: Any) -> Any:
    backups.put("late.txt", b"the backed-up bytes")
    source = LedgerSource(Ledger(aws.dynamodb, TABLE))
    (item,) = plan(source, BUCKET, RestoreScope(key="late.txt"), Selector()).items
    return item


@pytest.mark.parametrize(
    "body",
    [b"ENCRYPTED BY RANSOMWARE", b"ENCRYPTED BY RANSOM"],  # other size; the same size
    ids=["other-size", "same-size"],
)
def test_to_s3_our_sha256_metadata_on_other_bytes_is_no_proof_of_them(backups, volume, aws, body):
    """Anyone with s3:PutObject writes user metadata, and a tool that replaces an object's
    bytes may keep its metadata: an object claiming the backed-up SHA-256 was reported
    unchanged and never restored (a review, 2026-12-02). Only S3's own eTag or the bytes
    read back count."""
    item = _late_item(backups, aws)
    assert (len(body) == item.record.size) == (body == b"ENCRYPTED BY RANSOM")
    aws.s3.put_object(
        Bucket=BUCKET, Key="late.txt", Body=body, Metadata={SHA256_METADATA: item.record.sha256}
    )
    calls = record_calls(aws.s3)
    keeping = S3Target(aws.s3, volume)
    assert "needs --overwrite" in (keeping.check(item) or "")
    with pytest.raises(RestoreRefused, match="needs --overwrite"):
        keeping.restore(item, lambda _bytes: None)
    reads = [c for c in calls.calls if c.operation == "GetObject"]
    # the same size: read back (once by check, once by restore), its SHA-256 compared
    assert len(reads) == (2 if len(body) == item.record.size else 0)

    replacing = S3Target(aws.s3, volume, overwrite=True)
    assert replacing.restore(item, lambda _bytes: None) is Status.RESTORED
    restored = aws.s3.get_object(Bucket=BUCKET, Key="late.txt")["Body"].read()
    assert restored == b"the backed-up bytes"


def test_to_s3_a_restore_run_again_reads_its_own_upload_back_to_call_it_unchanged(
    backups, volume, aws
):
    """A restored object's eTag is not the backed-up upload's (a multipart original, or
    another bucket's encryption): our metadata says which version it holds, and the bytes
    read back (If-Match the eTag HeadObject gave) confirm it."""
    item = _late_item(backups, aws)
    target = S3Target(aws.s3, volume, prefix="again/", multipart_threshold=1 << 20)
    record = dataclasses.replace(item.record, etag="0" * 32)  # as if from another upload
    item = dataclasses.replace(item, record=record)
    calls = record_calls(aws.s3)
    assert target.restore(item, lambda _bytes: None) is Status.RESTORED
    assert target.restore(item, lambda _bytes: None) is Status.UNCHANGED
    reads = [c for c in calls.calls if c.operation == "GetObject"]
    assert len(reads) == 1 and reads[0].params.get("IfMatch")


def test_to_s3_an_object_replaced_between_head_and_read_is_not_unchanged(
    backups, volume, aws, monkeypatch
):
    item = _late_item(backups, aws)
    target = S3Target(aws.s3, volume, prefix="again/")
    record = dataclasses.replace(item.record, etag="0" * 32)
    item = dataclasses.replace(item, record=record)
    assert target.restore(item, lambda _bytes: None) is Status.RESTORED
    head = S3Target._head

    def then_replaced(self: S3Target, bucket: str, key: str) -> dict[str, Any] | None:
        found = head(self, bucket, key)
        aws.s3.put_object(
            Bucket=bucket, Key=key, Body=b"the backed-up byteZ", Metadata=found["Metadata"]
        )
        return found

    monkeypatch.setattr(S3Target, "_head", then_replaced)
    assert "same content" not in (target.check(item) or "")


def test_large_files_go_back_as_verified_multipart_uploads(backups, volume, aws):
    body = os.urandom((5 << 20) + 12345)
    backups.put("big.bin", body)
    backups.put("big-bad.bin", os.urandom(6 << 20))
    source = LedgerSource(Ledger(aws.dynamodb, TABLE))
    bad = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "big-bad.bin")
    _flip_a_byte(volume, bad.sha256)
    target = S3Target(aws.s3, volume, prefix="r/", multipart_threshold=1 << 20, part_size=5 << 20)

    summary = Restorer(target, workers=2).run(
        plan(source, BUCKET, RestoreScope(prefix="big"), Selector())
    )

    statuses = {r.item.key: r.status for r in summary.results}
    assert statuses == {"big.bin": Status.RESTORED, "big-bad.bin": Status.FAILED}
    restored = aws.s3.get_object(Bucket=BUCKET, Key="r/big.bin")
    assert restored["Body"].read() == body
    assert restored["ETag"].strip('"').endswith("-2")  # two parts
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="r/big-bad")
    assert "Uploads" not in aws.s3.list_multipart_uploads(Bucket=BUCKET)


# -- usage ---------------------------------------------------------------------------


def test_usage_and_configuration_errors_exit_2(restore, tmp_path, backups):
    assert restore("restore", "--prefix", "p", "--version", "v", "--to", "d").code == 2
    assert restore("restore", "--all", "--to", "d", "--bucket", "b").code == 2
    assert restore("share", "--key", "k").code == 2  # no staging bucket configured
    with pytest.raises(SystemExit) as usage:
        restore("restore", "--all")  # no target
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as usage:  # year 0 once in UTC: a usage error, no traceback
        restore("list", "--at", "0001-01-01T00:00:00+01:00")
    assert usage.value.code == 2
    out, err = io.StringIO(), io.StringIO()
    assert main(["list", "--config", str(tmp_path / "missing.yaml")], out=out, err=err) == 2
    assert "no such file" in err.getvalue()


def test_a_large_file_streams_with_flat_memory(backups, volume, aws, tmp_path, monkeypatch):
    # Stored as 4 MiB frames (FRAME_BYTES is 16 MiB): frames decompress in parallel, at most
    # PARALLEL_FRAMES + 1 of them in memory at once, never the whole file.
    monkeypatch.setattr(volume_module, "FRAME_BYTES", 4 << 20)
    backups.put("huge.bin", os.urandom(40 << 20))
    source = LedgerSource(Ledger(aws.dynamodb, TABLE))
    restore_plan = place(plan(source, BUCKET, RestoreScope(key="huge.bin"), Selector()))
    target = DirectoryTarget(volume, tmp_path / "out")

    tracemalloc.start()
    try:
        summary = Restorer(target, workers=1).run(restore_plan)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert summary.ok and (tmp_path / "out" / "huge.bin").stat().st_size == 40 << 20
    # the frames decompressing with their compressed bytes (random data: as large), the one
    # being written and the one before it (still bound to the loops' variables), a little
    # more; never the whole 40 MiB
    assert peak < (2 * volume_module.PARALLEL_FRAMES + 2) * (4 << 20) + (2 << 20)


@pytest.mark.parametrize("writes", ["direct", "page cache"])
def test_a_full_target_disk_fails_that_file_only_and_leaves_no_partial_file(
    backups, volume, aws, tmp_path, monkeypatch, writes
):
    backups.put("big.bin", os.urandom(12 << 20))  # large enough to be read ahead in a thread
    backups.put("small.txt", b"fits")
    if writes == "direct":  # storage/direct.py, where the filesystem has O_DIRECT
        real_direct = DirectWriter._write

        def direct_until_full(self, view):  # a fault-injecting wrapper: ENOSPC after 2 MiB
            if self.written + len(view) > 2 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_direct(self, view)

        monkeypatch.setattr(DirectWriter, "_write", direct_until_full)
    else:  # a filesystem without O_DIRECT: the page cache, writeback started as it goes
        monkeypatch.setattr(DirectWriter, "open", classmethod(lambda cls, fd, *a: None))
    real_write = WritebackAsYouGo.write

    def write_until_full(self, data):  # a fault-injecting wrapper: ENOSPC after 2 MiB
        if self._written + len(data) > 2 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(WritebackAsYouGo, "write", write_until_full)
    source = LedgerSource(Ledger(aws.dynamodb, TABLE))
    restore_plan = place(plan(source, BUCKET, RestoreScope(prefix=""), Selector()))
    out = tmp_path / "out"

    summary = Restorer(DirectoryTarget(volume, out), workers=2).run(restore_plan)

    statuses = {r.item.key: r.status for r in summary.results}
    assert statuses == {"big.bin": Status.FAILED, "small.txt": Status.RESTORED}
    [failed] = summary.failed
    assert "No space left on device" in (failed.error or "")
    assert _tree(out) == {"small.txt"}  # no partial big.bin, no .restore-*.part left behind
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_to_s3_leaves_objects_that_are_still_the_backed_up_upload(history, restore, aws):
    result = restore("restore", "--all", "--at", "2026-11-01T11:45:00Z", "--to-s3", "--json")

    assert result.code == 0, result.out
    assert {k: f["status"] for k, f in result.files().items()} == {
        "doc": "restored",  # deleted in S3 since: put back
        "late": "unchanged",  # S3 still holds exactly that upload
    }


def test_an_interrupted_restore_finishes_started_files_and_skips_the_rest(backups, aws):
    for index in range(12):
        backups.put(f"f{index:02}", b"x")
    source = LedgerSource(Ledger(aws.dynamodb, TABLE))
    stop = threading.Event()
    attempted = []

    class Interrupted:
        def destination(self, item):
            return item.key

        def check(self, item):
            return None

        def restore(self, item, on_bytes):
            attempted.append(item.key)
            if len(attempted) == 2:
                stop.set()  # what the first Ctrl-C does
            return Status.RESTORED

    restorer = Restorer(Interrupted(), workers=1, stop=stop)
    summary = restorer.run(plan(source, BUCKET, RestoreScope(prefix=""), Selector()))

    assert attempted == ["f00", "f01"]
    assert summary.count(Status.RESTORED) == 2 and len(summary.failed) == 10
    assert summary.failed[0].error == "interrupted: not started"


class NotHandled(Exception):
    pass


@pytest.mark.parametrize(
    ("signum", "again"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")]
)
def test_the_first_ctrl_c_or_sigterm_sets_the_stop_flag_and_the_second_aborts(signum, again):
    """`timeout` or `systemctl stop` send SIGTERM: it killed the restore at once (no summary,
    temp files left for the next run to sweep); it now stops as Ctrl-C does. A handler of the
    test's own stands in for the default action (which would end this test run)."""
    stop = threading.Event()
    err = io.StringIO()

    def unhandled(signum: int, frame: object) -> None:
        raise NotHandled

    outside = signal.signal(signum, unhandled)
    try:
        with first_interrupt_sets(stop, err):
            signal.raise_signal(signum)
            assert stop.is_set() and f"{again} again to abort" in err.getvalue()
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signum)
        assert signal.getsignal(signum) is unhandled
    finally:
        signal.signal(signum, outside)


# -- modes of what a restore writes (issue 16, item 5) -----------------------------------------


def test_restored_files_and_new_directories_are_not_readable_by_others(backups, restore, tmp_path):
    """A restore often runs as root into a shared place: 0600 files, 0700 new directories
    (was 0644 and the umask's directories), whatever the umask; the target's existing
    directories keep their mode."""
    backups.put("payroll/2026/march.csv", b"salaries")
    target = tmp_path / "shared"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    old_umask = os.umask(0o000)  # the widest umask: the modes must not come from it
    try:
        result = restore("restore", "--all", "--to", str(target))
    finally:
        os.umask(old_umask)

    assert result.code == 0, result.err
    assert (target / "payroll/2026/march.csv").stat().st_mode & 0o777 == 0o600
    assert (target / "payroll").stat().st_mode & 0o777 == 0o700
    assert (target / "payroll/2026").stat().st_mode & 0o777 == 0o700
    assert target.stat().st_mode & 0o777 == 0o755  # the operator's directory is left alone


def test_mode_and_dir_mode_choose_other_modes(backups, restore, tmp_path):
    backups.put("site/index.html", b"<html/>")
    result = restore(
        "restore", "--all", "--to", str(tmp_path / "www"), "--mode", "0644", "--dir-mode", "755"
    )

    assert result.code == 0, result.err
    assert (tmp_path / "www/site/index.html").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "www/site").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "www").stat().st_mode & 0o777 == 0o755  # created by the restore


@pytest.mark.parametrize("mode", ["4755", "rw-r--r--", "999"])
def test_a_mode_beyond_permission_bits_is_a_usage_error(restore, tmp_path, mode):
    with pytest.raises(SystemExit) as exited:
        restore("restore", "--all", "--to", str(tmp_path / "x"), "--mode", mode)
    assert exited.value.code == 2


# -- a tampered copy that expands far past its record (issue 16, item 2) ---------------------


def test_a_planted_decompression_bomb_fails_that_file_and_writes_nothing_beyond_its_size(
    backups, restore, volume, tmp_path
):
    """An 8-KiB-ish copy on the volume that expands to 256 MiB under a record of 11 bytes:
    was decompressed in full into the target's temp file before the hash check said no."""
    import hashlib

    import zstandard

    backups.put("small.txt", b"eleven byte")
    backups.put("fine.txt", b"restored anyway")
    sha = hashlib.sha256(b"eleven byte").hexdigest()
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))
    assert len(bomb) < 64 << 10
    volume.copy_path(sha).write_bytes(bomb)
    target = tmp_path / "out"

    result = restore("restore", "--all", "--to", str(target), "--json")

    assert result.code == 1
    failed = result.files()["small.txt"]
    assert failed["status"] == "failed" and "expands past the recorded 11 bytes" in failed["error"]
    assert (target / "fine.txt").read_bytes() == b"restored anyway"
    written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert written == len(b"restored anyway")  # no partial file, no temp file left behind
