"""A fleet restore to S3 (`restore --to-s3 --fleet`): every member restores its own share.

No coordinator and no queue: the operator runs the same command on every member (SSM Run
Command), each goes through the same selection, restores the versions its volume holds
(`plan.held_here`) and skips the rest. Before each PUT it *claims* the key with one
conditional PutItem in the ledger's table; only the member whose claim was written puts the
object, so a version two volumes hold (a kept duplicate, a replica) is restored once. The
claim is marked done after the PUT succeeded. A claim left by a member that died is retaken
after its lease (renewed at half the lease while a multipart upload sends its parts); a
failed one by the next run (of any member).

Items, in a partition of their own (a bucket name cannot hold ``#``)::

    pk = "restore-job#<job id>"
    sk = "job"                 the job's arguments (a run with other arguments is refused)
       = "key#<key>"           one claim per key: state claimed | done | failed, member,
                               volume, version, lease (epoch seconds), error
       = "member#<member id>"  each member's last run: its counts, when it finished

Every item carries ``expires_at`` (epoch seconds, a Number): RETENTION after it was last
written. Bootstrap turns on the table's DynamoDB Time to Live on that attribute, which
deletes an expired item lazily (typically within two days, and expired items show up in
reads until then): so the readers here ignore an item whose ``expires_at`` has passed, and
the conditional writes treat it as absent (a job id used again after that starts afresh).
Items written before ``expires_at`` existed never expire. The job item is kept alive with
its claims: whenever a member joins the job or writes an item under it (a claim taken,
renewed or finished, its run recorded) and the job item would expire before that item, the
member moves the job's ``expires_at`` to RETENTION + KEEP_ALIVE_SLACK from now (one
conditional PutItem of the same item, about once a day per member while the job runs), so
a job that runs longer than RETENTION never expires before its claims.

`summarise` reads them back (one Query) against the selection: keys done per member, in
progress, failed, waiting for a live member that holds them, and held by no live volume.

One run of a job per member at a time (`one_run`): a member retakes its own claims at once
(its run that died), so two runs of the same member would both pass every claim and put
every key twice. Each run holds an exclusive `flock` on a file of its own for (job, member)
in a directory of the operator's (agent/cli/state_dir.py) for its whole length; a second
run is refused before it writes anything to the table. The kernel drops the lock with the
process, so a run killed outright never blocks the next one, which retakes its claims.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from agent.aws import classify, error_code
from agent.errors import BackupAgentError
from agent.records import VersionRecord
from agent.restore.plan import Item, Plan
from agent.restore.targets import Status, Target

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = structlog.get_logger("agent.restore")

JOB_PREFIX = "restore-job#"
JOB_SK = "job"
CLAIM_PREFIX = "key#"
MEMBER_PREFIX = "member#"
CLAIMED, DONE, FAILED = "claimed", "done", "failed"
DEFAULT_LEASE = timedelta(hours=1)
EXPIRES_AT = "expires_at"  # the table's TTL attribute (bootstrap enables it)
RETENTION = timedelta(days=30)  # an item expires this long after its last write
# The job item is moved this far beyond RETENTION when it is kept alive: a member rewrites
# it about once per KEEP_ALIVE_SLACK while it writes claims, not once per claim.
KEEP_ALIVE_SLACK = timedelta(days=1)
MAX_SK_BYTES = 1024  # DynamoDB's limit on a sort key value
MAX_ERROR = 1000
_JOB_ID = "abcdefghijklmnopqrstuvwxyz0123456789-_."
# A claim this member holds: claimed by it and not expired (an expired item is as absent)
_HELD_HERE = (
    f"member_id = :me AND #s = :claimed AND"
    f" (attribute_not_exists({EXPIRES_AT}) OR {EXPIRES_AT} > :expired)"
)


class JobMismatch(BackupAgentError):
    """A job id already started with other arguments."""


class RunRefused(BackupAgentError):
    """This run may not work on the job: another run of it on this member holds its lock,
    or the lock cannot be taken."""


def new_job_id(now: datetime) -> str:
    return f"restore-{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def check_job_id(job_id: str) -> str | None:
    """Why `job_id` is not a job id (letters, digits, - _ ., at most 64), or None."""
    if not job_id or len(job_id) > 64 or any(c not in _JOB_ID for c in job_id.lower()):
        return f"{job_id!r}: letters, digits, '-', '_' and '.', at most 64"
    return None


def claim_sk(key: str) -> str:
    """The claim's sort key: the key itself, or its SHA-256 when that would be too long."""
    sk = CLAIM_PREFIX + key
    if len(sk.encode("utf-8", "surrogatepass")) <= MAX_SK_BYTES:
        return sk
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{CLAIM_PREFIX}sha256:{digest}"


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    state: str
    member_id: str
    volume_id: str
    version_token: str
    lease_until: float  # epoch seconds
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MemberRun:
    member_id: str
    volume_id: str
    finished: str
    counts: dict[str, int]


class RestoreJob:
    """One job's items in the table, seen by one member."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        job_id: str,
        *,
        member_id: str,
        volume_id: str,
        clock: Callable[[], datetime],
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        self._db = dynamodb
        self.table = table
        self.job_id = job_id
        self.pk = JOB_PREFIX + job_id
        self.member_id = member_id
        self.volume_id = volume_id
        self.clock = clock
        self.lease = lease
        self._job: dict[str, Any] | None = None  # the job item as last written or read here

    # -- the job -------------------------------------------------------------------------

    def open(self, arguments: Mapping[str, Any], *, create: bool = True) -> bool:
        """Start the job with `arguments` (unless `create` is False), or join it; True
        when this run started it. JobMismatch when it was started with other arguments
        (every member must select the same versions), or does not exist and may not be
        started."""
        text = json.dumps(dict(arguments), sort_keys=True, default=str)
        if not create and self._get(JOB_SK) is None:
            raise JobMismatch(f"no restore job {self.job_id} in the table")
        item = {
            "pk": {"S": self.pk},
            "sk": {"S": JOB_SK},
            "arguments": {"S": text},
            "started": {"S": self.clock().isoformat()},
            "started_by": {"S": self.member_id},
            EXPIRES_AT: {"N": _expiry(self.clock())},
        }
        vacant = f"attribute_not_exists(pk) OR {EXPIRES_AT} <= :now"
        if self._put(item, vacant, {":now": {"N": _ttl_epoch(self.clock())}}, {}, "job"):
            log.info("restore.job_started", job=self.job_id, member=self.member_id)
            self._job = item
            return True
        stored = self._get(JOB_SK)
        held = stored.get("arguments", {}).get("S") if stored else None
        if held != text:
            raise JobMismatch(
                f"restore job {self.job_id} was started with other arguments ({held});"
                " run the same command on every member, or choose another --job"
            )
        self._job = stored
        self._keep_alive(self.clock())  # a member joins: the job lives RETENTION from now
        return False

    def _keep_alive(self, now: datetime) -> None:
        """Move the job item's ``expires_at`` forward when it would expire before an item
        written `now` (RETENTION from now): to KEEP_ALIVE_SLACK beyond that. Conditional on
        the job being the one this member opened (same arguments), still alive, and moved
        forward only; otherwise it is read back: moved further by another member (kept),
        expired (started again with the same arguments), or replaced (left alone)."""
        job = self._job
        if job is None:
            return  # not opened here: no job item to keep alive
        current = _expires_at(job)
        if current is None or current >= (now + RETENTION).timestamp():
            return  # never expires (an older release's), or outlives what is written now
        moved = {**job, EXPIRES_AT: {"N": _ttl_epoch(now + RETENTION + KEEP_ALIVE_SLACK)}}
        condition = f"arguments = :args AND {EXPIRES_AT} > :now AND {EXPIRES_AT} < :moved"
        values = {
            ":args": job["arguments"],
            ":now": {"N": _ttl_epoch(now)},
            ":moved": moved[EXPIRES_AT],
        }
        if self._put(moved, condition, values, {}, "job keep-alive"):
            self._job = moved
            log.debug("restore.job_kept_alive", job=self.job_id, expires_at=moved[EXPIRES_AT])
            return
        stored = self._get(JOB_SK)
        if stored is None:
            # Expired: nothing was written under it for RETENTION, so its claims expired
            # too. It starts again with the same arguments (as `open` would start it).
            vacant = f"attribute_not_exists(pk) OR {EXPIRES_AT} <= :now"
            if self._put(moved, vacant, {":now": values[":now"]}, {}, "job restart"):
                log.warning("restore.job_restarted", job=self.job_id, member=self.member_id)
                self._job = moved
                return
            stored = self._get(JOB_SK)
        if stored is None or stored.get("arguments") != job["arguments"]:
            # started afresh meanwhile, with other arguments: no longer this member's job
            log.warning("restore.job_replaced", job=self.job_id, member=self.member_id)
            self._job = None
            return
        self._job = stored  # another member moved it already

    # -- claims --------------------------------------------------------------------------

    def claim(self, record: VersionRecord) -> bool:
        """Take `record`'s key for this member; False when another member holds it (or
        restored it). A key done is never taken again; a failed one, one this member held
        before (a run that died: hence one run per member at a time, `one_run`), or one
        whose lease ran out is taken over."""
        now = self.clock()
        item = self._claim_item(record, CLAIMED, now)
        condition = (
            f"attribute_not_exists(pk) OR {EXPIRES_AT} <= :expired OR (#s <> :done AND"
            " (#s = :failed OR member_id = :me OR lease_until < :now))"
        )
        values = {
            ":done": {"S": DONE},
            ":failed": {"S": FAILED},
            ":me": {"S": self.member_id},
            ":now": {"N": _epoch(now)},
            ":expired": {"N": _ttl_epoch(now)},
        }
        won = self._put(item, condition, values, {"#s": "state"}, "claim")
        log.debug("restore.claim", job=self.job_id, key=record.key, won=won)
        if won:
            self._keep_alive(now)
        return won

    def renew(self, record: VersionRecord) -> bool:
        """Extend this member's claim by a lease from now (a long upload still running);
        False when the claim is no longer this member's."""
        now = self.clock()
        renewed = self._put(
            self._claim_item(record, CLAIMED, now),
            _HELD_HERE,
            self._held_here_values(now),
            {"#s": "state"},
            "claim renewal",
        )
        if renewed:
            self._keep_alive(now)
        return renewed

    def finish(self, record: VersionRecord, *, error: str | None = None) -> bool:
        """Mark this member's claim done (or failed, with `error`); False when the claim
        is no longer this member's (its lease ran out and another member took it over)."""
        now = self.clock()
        item = self._claim_item(record, FAILED if error else DONE, now, error)
        mine = self._put(
            item, _HELD_HERE, self._held_here_values(now), {"#s": "state"}, "claim done"
        )
        if mine:
            self._keep_alive(now)
        else:
            log.warning("restore.claim_lost", job=self.job_id, key=record.key)
        return mine

    def _held_here_values(self, now: datetime) -> dict[str, Any]:
        return {
            ":me": {"S": self.member_id},
            ":claimed": {"S": CLAIMED},
            ":expired": {"N": _ttl_epoch(now)},
        }

    def record_run(self, counts: Mapping[str, int]) -> None:
        """This member's run, for the summary: what it restored, left and failed."""
        now = self.clock()
        item: dict[str, Any] = {
            "pk": {"S": self.pk},
            "sk": {"S": MEMBER_PREFIX + self.member_id},
            "member_id": {"S": self.member_id},
            "volume_id": {"S": self.volume_id},
            "finished": {"S": now.isoformat()},
            "counts": {"M": {k: {"N": str(v)} for k, v in counts.items()}},
            EXPIRES_AT: {"N": _expiry(now)},
        }
        self._put(item, None, {}, {}, "member run")
        self._keep_alive(now)

    def _claim_item(
        self, record: VersionRecord, state: str, now: datetime, error: str | None = None
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "pk": {"S": self.pk},
            "sk": {"S": claim_sk(record.key)},
            "object_key": {"S": record.key},
            "state": {"S": state},
            "member_id": {"S": self.member_id},
            "volume_id": {"S": self.volume_id},
            "version_token": {"S": record.version_token},
            "lease_until": {"N": _epoch(now + self.lease)},
            "at": {"S": now.isoformat()},
            EXPIRES_AT: {"N": _expiry(now)},
        }
        if error:
            item["error"] = {"S": error[:MAX_ERROR]}
        return item

    # -- reads ---------------------------------------------------------------------------

    def items(self) -> tuple[dict[str, Claim], list[MemberRun]]:
        """Every claim (by key) and every member's run: one Query of the job's partition.
        Expired items (TTL deletes them lazily) are left out."""
        claims: dict[str, Claim] = {}
        runs: list[MemberRun] = []
        now = self.clock()
        paginator = self._db.get_paginator("query")
        try:
            for page in paginator.paginate(
                TableName=self.table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": self.pk}},
                ConsistentRead=True,
            ):
                for item in page.get("Items", []):
                    if _expired(item, now):
                        continue
                    sk = _text(item, "sk")
                    if sk.startswith(CLAIM_PREFIX):
                        claim = _claim(item)
                        if claim is not None:
                            claims[claim.key] = claim
                    elif sk.startswith(MEMBER_PREFIX):
                        runs.append(_run(item))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB Query restore job") from exc
        return claims, sorted(runs, key=lambda r: r.member_id)

    def _get(self, sk: str) -> dict[str, Any] | None:
        """One item, by a Query (the operator's role may Query the table, not GetItem);
        None when there is none or it expired."""
        try:
            response = self._db.query(
                TableName=self.table,
                KeyConditionExpression="pk = :pk AND sk = :sk",
                ExpressionAttributeValues={":pk": {"S": self.pk}, ":sk": {"S": sk}},
                ConsistentRead=True,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB Query restore job") from exc
        items: list[dict[str, Any]] = response.get("Items", [])
        return items[0] if items and not _expired(items[0], self.clock()) else None

    def _put(
        self,
        item: dict[str, Any],
        condition: str | None,
        values: dict[str, Any],
        names: dict[str, str],
        what: str,
    ) -> bool:
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": item}
        if condition:
            kwargs["ConditionExpression"] = condition
        if values:
            kwargs["ExpressionAttributeValues"] = values
        if names:
            kwargs["ExpressionAttributeNames"] = names
        try:
            self._db.put_item(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise classify(exc, f"DynamoDB PutItem restore {what}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise classify(exc, f"DynamoDB PutItem restore {what}") from exc
        return True


def _epoch(when: datetime) -> str:
    return f"{when.timestamp():.3f}"


def _ttl_epoch(when: datetime) -> str:
    """Whole epoch seconds, as DynamoDB's TTL reads its attribute."""
    return str(int(when.timestamp()))


def _expiry(written: datetime) -> str:
    return _ttl_epoch(written + RETENTION)


def _expires_at(item: Mapping[str, Any]) -> float | None:
    """An item's `expires_at` in epoch seconds; None without one, or with one that is not
    a number (TTL ignores it: such an item never expires)."""
    value = item.get(EXPIRES_AT)
    try:
        return float(value["N"]) if isinstance(value, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def _expired(item: Mapping[str, Any], now: datetime) -> bool:
    """Past its `expires_at` (as TTL sees it: at or before now); an item without one never
    expires."""
    expires = _expires_at(item)
    return expires is not None and expires <= now.timestamp()


def _text(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    text = value.get("S") if isinstance(value, dict) else None
    return text if isinstance(text, str) else ""


def _claim(item: Mapping[str, Any]) -> Claim | None:
    """A claim item read back (untrusted: one that does not parse is skipped, logged)."""
    try:
        lease = float(item["lease_until"]["N"])
    except (KeyError, TypeError, ValueError):
        lease = 0.0
    key, state = _text(item, "object_key"), _text(item, "state")
    if not key or state not in (CLAIMED, DONE, FAILED):
        log.warning("restore.bad_claim_item", sk=_text(item, "sk"))
        return None
    return Claim(
        key,
        state,
        _text(item, "member_id"),
        _text(item, "volume_id"),
        _text(item, "version_token"),
        lease,
        _text(item, "error") or None,
    )


def _run(item: Mapping[str, Any]) -> MemberRun:
    counts: dict[str, int] = {}
    raw = item.get("counts", {}).get("M", {}) if isinstance(item.get("counts"), dict) else {}
    for name, value in raw.items():
        try:
            counts[str(name)] = int(value["N"])
        except (KeyError, TypeError, ValueError):
            continue
    return MemberRun(
        _text(item, "member_id"), _text(item, "volume_id"), _text(item, "finished"), counts
    )


# -- one run per member: the lock ------------------------------------------------------------

LOCK_PREFIX = "restore-job-"
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOCK_ATTEMPTS = 5  # a finishing run removes the file between our open and our flock


def lock_name(job_id: str, member_id: str) -> str:
    """The lock file's name: the job id (already checked: `check_job_id`) and a digest of
    the member id (an instance id, or host/volume: two agents on one host are two members,
    each with its own claims, and run the job side by side)."""
    digest = hashlib.sha256(member_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{LOCK_PREFIX}{job_id}.{digest}.lock"


@contextlib.contextmanager
def one_run(dir_fd: int, directory: Path, job_id: str, member_id: str) -> Iterator[None]:
    """Hold this member's lock on `job_id` (a file in the directory `dir_fd`, `directory`
    for messages) while the body runs; RunRefused, having done nothing, when another run
    holds it or it cannot be taken.

    The file is opened relative to the directory, O_NOFOLLOW (a link planted there is not
    followed), created 0600, and must be a regular file. The run removes it when it ends,
    still holding the lock; a run that opened it meanwhile finds, once its flock is granted,
    that the name no longer leads to it, and takes the new file instead. A run killed outright
    leaves the file, unlocked: the next run takes it."""
    name = lock_name(job_id, member_id)
    for _ in range(_LOCK_ATTEMPTS):
        fd = _lock_file(dir_fd, directory, name, job_id)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunRefused(
                f"restore job {job_id} is already running on this member ({member_id}):"
                " this run would put the keys that run is putting again; let it finish (or"
                " stop it), then run the command again; --status shows the job meanwhile"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _names(dir_fd, name, fd):
            break
        os.close(fd)  # removed by the run that held it, which ended: take the new one
    else:
        raise RunRefused(f"restore job {job_id}: could not take its lock in {directory}")
    log.debug("restore.job_locked", job=job_id, lock=str(directory / name))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        os.close(fd)  # closing releases the lock


def _lock_file(dir_fd: int, directory: Path, name: str, job_id: str) -> int:
    try:
        fd = os.open(name, _LOCK_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise RunRefused(
            f"restore job {job_id}: cannot open its lock {directory / name}"
            f" ({exc.strerror or exc}); nothing was restored"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunRefused(f"restore job {job_id}: {directory / name} is not a regular file")
    return fd


def _names(dir_fd: int, name: str, fd: int) -> bool:
    """Whether `name` in the directory still leads to the file open as `fd`."""
    try:
        there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


# -- the member's target: claim, put, mark ---------------------------------------------------


class ClaimingTarget:
    """An S3 target that claims each key before its PUT and marks the claim after."""

    def __init__(self, target: Target, job: RestoreJob) -> None:
        self.target = target
        self.job = job

    def destination(self, item: Item) -> str:
        return self.target.destination(item)

    def check(self, item: Item) -> str | None:
        return self.target.check(item)

    def restore(self, item: Item, on_bytes: Callable[[int], None]) -> Status:
        if not self.job.claim(item.record):
            return Status.TAKEN
        renewed = self.job.clock()

        def progress(nbytes: int) -> None:  # a part sent: renew at half the lease
            nonlocal renewed
            on_bytes(nbytes)
            if self.job.clock() - renewed >= self.job.lease / 2:
                self.job.renew(item.record)
                renewed = self.job.clock()

        try:
            status = self.target.restore(item, progress)
        except (BackupAgentError, OSError) as exc:
            self.job.finish(item.record, error=str(exc) or type(exc).__name__)
            raise
        except BaseException:
            self.job.finish(item.record, error="interrupted")
            raise
        self.job.finish(item.record)
        return status


# -- the summary -----------------------------------------------------------------------------


@dataclass
class JobSummary:
    job_id: str
    selected: int = 0
    done_by: dict[str, int] = field(default_factory=dict)  # member id -> keys done
    in_progress: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)  # a live member holds it
    unheld: list[dict[str, Any]] = field(default_factory=list)  # no live volume holds it
    missing: list[dict[str, Any]] = field(default_factory=list)  # asked for, not found
    members: list[dict[str, Any]] = field(default_factory=list)  # each member's last run

    @property
    def done(self) -> int:
        return sum(self.done_by.values())

    @property
    def complete(self) -> bool:
        return self.done == self.selected and not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "job",
            "job": self.job_id,
            "complete": self.complete,
            "selected": self.selected,
            "done": self.done,
            "done_by": dict(sorted(self.done_by.items())),
            "in_progress": self.in_progress,
            "failed": self.failed,
            "waiting": self.waiting,
            "not_held_by_a_live_volume": self.unheld,
            "missing": self.missing,
            "members": self.members,
        }


def summarise(
    job: RestoreJob,
    selection: Plan,
    here: str,
    live: Mapping[str, str],
    now: datetime,
) -> JobSummary:
    """The job against `selection` (held here and elsewhere): `here` is this member's
    volume id, `live` maps each volume a live member serves to that member."""
    claims, runs = job.items()
    summary = JobSummary(job.job_id)
    summary.members = [
        {"member_id": r.member_id, "volume_id": r.volume_id, "finished": r.finished, **r.counts}
        for r in runs
    ]
    summary.missing = [{"key": c.key, "reason": c.reason} for c in selection.missing]
    held_here = {item.key for item in selection.items}
    for item in _by_key(selection.items, selection.elsewhere):
        summary.selected += 1
        claim = claims.get(item.key)
        entry: dict[str, Any] = {
            "key": item.key,
            "version_id": item.record.version_id,
            "version_token": item.record.version_token,
        }
        if claim is not None and claim.state == DONE:
            summary.done_by[claim.member_id] = summary.done_by.get(claim.member_id, 0) + 1
        elif claim is not None and claim.state == FAILED:
            summary.failed.append({**entry, "member_id": claim.member_id, "error": claim.error})
        elif claim is not None and claim.lease_until >= now.timestamp():
            summary.in_progress.append({**entry, "member_id": claim.member_id})
        else:
            volumes = [item.record.volume_id] + ([here] if item.key in held_here else [])
            served = [(v, live[v]) for v in volumes if v in live]
            if served:
                volume, member = served[0]
                summary.waiting.append({**entry, "volume_id": volume, "member_id": member})
            else:
                summary.unheld.append({**entry, "volume_id": item.record.volume_id})
    return summary


def _by_key(*groups: Iterable[Item]) -> Iterable[Item]:
    seen: set[str] = set()
    for group in groups:
        for item in group:
            if item.key not in seen:
                seen.add(item.key)
                yield item
