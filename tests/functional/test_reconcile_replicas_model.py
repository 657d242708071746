"""Raising `fleet.replicas` as a model (hypothesis, moto): holders per replica group
against what S3 holds and what each volume's journal holds.

Two keys; versions put before and after R goes from 1 to 2 (after it, a live event may
reach only some groups: the others' were lost), versions deleted for good from S3 (their
events lost), reconciles on any member (vol-a: the old volume, then group 1; vol-b and
vol-c: group 2) in any order. After every step:

* every holder the ledger names has the version on its volume (a journal record with the
  ledger's SHA-256, and the copy);
* no group holds a version on two volumes (the runs here are one at a time);
* after a reconcile on a member of group G, every version S3 still has is held for G, and
  that reconcile copied no version S3 no longer had;
* after a reconcile in each group with nothing changed since, `verify`'s count holds: every
  version S3 has is on two volumes.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from moto import mock_aws

from agent.aws import Clients
from agent.config import ReconcileConfig
from agent.lifecycle.context import Pacer
from agent.lifecycle.reconcile import Reconciler
from agent.pipeline.backup import BackupService, Outcome
from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger, table_definition
from tests.support.aws import BUCKET, REGION, TABLE
from tests.support.fleet import member_service, member_volume
from tests.support.lifecycle import created, put

GROUP_OF = {"vol-a": "backup-events-1", "vol-b": "backup-events-2", "vol-c": "backup-events-2"}
KEYS = ("k1", "k2")
T0 = datetime.now(UTC) - timedelta(days=1)


class RaisingReplicas(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(mock_aws())
        root = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        session = boto3.session.Session(region_name=REGION)
        self.aws = Clients(
            s3=session.client("s3"),
            sqs=session.client("sqs"),
            dynamodb=session.client("dynamodb"),
            session=session,
        )
        self.aws.s3.create_bucket(Bucket=BUCKET)
        self.aws.s3.put_bucket_versioning(
            Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
        )
        self.aws.dynamodb.create_table(**table_definition(TABLE))
        self.volumes = {name: member_volume(root, name) for name in GROUP_OF}
        self.raised = False
        self.services: dict[str, BackupService] = {
            "vol-a": member_service(self.aws, self.volumes["vol-a"])
        }
        self.in_s3: dict[str, list[str]] = {k: [] for k in KEYS}  # version ids, oldest first
        self.puts = 0
        self.reconciled_since_change: set[str] = set()  # groups

    def teardown(self) -> None:
        self._stack.close()

    # -- helpers ---------------------------------------------------------------------

    def _service(self, member: str) -> BackupService:
        if member not in self.services:
            self.services[member] = member_service(
                self.aws, self.volumes[member], group=GROUP_OF[member]
            )
        return self.services[member]

    def _records(self) -> list[VersionRecord]:
        ledger = Ledger(self.aws.dynamodb, TABLE)
        return [r for k in KEYS for r in ledger.versions(BUCKET, k) if r.sha256]

    def _journalled(self, member: str) -> Counter[str]:
        journal = Journal(self.volumes[member].journal_dir)
        return Counter(r.version_token for r in journal.read_all() if r.sha256)

    def _held_for(self, record: VersionRecord, group: str) -> str | None:
        holder = record.holder_in(group)
        if holder is None and record.holders is None and GROUP_OF[record.volume_id] == group:
            return record.volume_id  # written before replicas, by the old volume
        return holder

    # -- rules -----------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), reaches=st.sampled_from(["vol-a", "vol-b", "vol-c", "ab"]))
    def put_a_version(self, key: str, reaches: str) -> None:
        """A new version; before the change vol-a backs it up, after it the event reaches
        the members named (the other groups' were lost)."""
        self.puts += 1
        body = f"{key} version {self.puts} ".encode() * 20
        response = put(self.aws, key, body)
        self.in_s3[key].append(response["VersionId"])
        event = created(key, response, len(body), at=T0 + timedelta(seconds=self.puts))
        members = (
            ["vol-a"] if not self.raised else (["vol-a", "vol-b"] if reaches == "ab" else [reaches])
        )
        for member in members:
            assert self._service(member).process(event).outcome is Outcome.STORED
        self.reconciled_since_change.clear()

    @precondition(lambda self: not self.raised)
    @rule()
    def raise_replicas_to_two(self) -> None:
        self.raised = True
        self.services.clear()  # vol-a's member now writes for group 1

    @rule(key=st.sampled_from(KEYS))
    def delete_the_oldest_version_for_good(self, key: str) -> None:
        if not self.in_s3[key]:
            return
        version = self.in_s3[key].pop(0)
        self.aws.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version)
        self.reconciled_since_change.clear()

    @precondition(lambda self: self.raised)
    @rule(member=st.sampled_from(sorted(GROUP_OF)))
    def reconcile(self, member: str) -> None:
        before = self._journalled(member)
        Reconciler(
            s3=self.aws.s3,
            ledger=Ledger(self.aws.dynamodb, TABLE),
            service=self._service(member),
            volume=self.volumes[member],
            buckets=[BUCKET],
            settings=ReconcileConfig(include_noncurrent=True),
            limiter=Pacer(1000, sleep=lambda s: None),
        ).run_once()
        group = GROUP_OF[member]
        records = {r.version_token: r for r in self._records()}
        for key, versions in self.in_s3.items():
            for version in versions:
                record = records.get("v:" + version)
                assert record is not None, (key, version)
                assert self._held_for(record, group) is not None, (member, key, version)
        gone = {"v:" + r.version_id for r in records.values() if r.version_id} - {
            "v:" + v for vs in self.in_s3.values() for v in vs
        }
        copied = self._journalled(member) - before
        assert not set(copied) & gone, copied
        self.reconciled_since_change.add(group)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def every_named_holder_has_the_copy(self) -> None:
        journals = {m: self._journalled(m) for m in GROUP_OF}
        for record in self._records():
            for volume_id in record.holder_volumes():
                assert journals[volume_id][record.version_token] >= 1, (record, volume_id)
                assert self.volumes[volume_id].has_copy(record.sha256 or "")
            for group in set(GROUP_OF.values()):
                on = [
                    m
                    for m, j in journals.items()
                    if GROUP_OF[m] == group and j[record.version_token]
                ]
                assert len(on) <= 1, (record.version_token, on)

    @invariant()
    def both_groups_reconciled_means_nothing_under_replicated(self) -> None:
        if len(self.reconciled_since_change) < 2:
            return
        live = {"v:" + v for vs in self.in_s3.values() for v in vs}
        for record in self._records():
            if record.version_token in live:
                assert len(record.holder_volumes()) == 2, record


def test_holders_per_group_follow_s3_whatever_order_things_happen_in() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    run_state_machine_as_test(
        RaisingReplicas,
        settings=settings(
            max_examples=12,
            stateful_step_count=12,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
