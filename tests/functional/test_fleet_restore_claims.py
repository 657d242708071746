"""The fleet restore's claims as a state machine (hypothesis), against moto's DynamoDB.

The oracle is the rule docs/fleet.md states: a member may claim a key that nobody claimed,
one that failed, one it claimed itself before, or one whose lease ran out, never one that
is done; only the member holding a claim marks it done or failed. An item past its
`expires_at` (RETENTION after its last write: TTL deletes it some time later) is as absent:
not read back, claimable by anyone, not finished. Whatever the members do
in whatever order, the table answers as the rule says, and a key is never claimed by a
second member while the first one's lease runs (so it is never put twice at once). And the
job item outlives every item written under it: the members' writes keep it alive.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from moto import mock_aws

from agent.records import VersionRecord
from agent.restore.job import (
    CLAIMED,
    DONE,
    EXPIRES_AT,
    FAILED,
    JOB_PREFIX,
    RETENTION,
    RestoreJob,
)
from agent.storage.ledger import table_definition
from tests.support.aws import REGION
from tests.support.clock import FakeClock

MEMBERS = ("x", "y", "z")
KEYS = ("docs/a.txt", "docs/b.txt")
LEASE = timedelta(minutes=10)
TABLE = "claims-table"
T0 = datetime(2026, 12, 1, 6, tzinfo=UTC)


def _record(key: str) -> VersionRecord:
    return VersionRecord.from_dict(
        {
            "bucket": "company-documents",
            "key": key,
            "version_token": f"v:{key}",
            "event_name": "ObjectCreated:Put",
            "event_time": T0.isoformat(),
            "backup_time": T0.isoformat(),
            "sha256": hashlib.sha256(key.encode()).hexdigest(),  # a version with content
            "size": len(key),
        }
    )


@dataclass
class Held:
    state: str
    member: str
    lease_until: datetime
    expires: datetime  # RETENTION after the write


class Claims(RuleBasedStateMachine):
    dynamodb: Any
    jobs = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(T0)
        job_id = f"model-{next(self.jobs)}"  # a partition of its own per example
        self.members = {
            m: RestoreJob(
                self.dynamodb,
                TABLE,
                job_id,
                member_id=m,
                volume_id=f"vol-{m}",
                clock=self.clock,
                lease=LEASE,
            )
            for m in MEMBERS
        }
        for member in MEMBERS:  # the first starts the job, the others join it
            self.members[member].open({"prefix": "docs/"})
        self.job_id = job_id
        self.model: dict[str, Held] = {}
        self.holding: dict[str, tuple[str, datetime]] = {}  # key -> (member, lease end) live

    def _live(self, key: str) -> Held | None:
        held = self.model.get(key)
        return held if held is not None and held.expires > self.clock() else None

    def _may_claim(self, member: str, key: str) -> bool:
        held = self._live(key)
        if held is None:
            return True
        if held.state == DONE:
            return False
        return held.state == FAILED or held.member == member or held.lease_until < self.clock()

    @rule(member=st.sampled_from(MEMBERS), key=st.sampled_from(KEYS))
    def claim(self, member: str, key: str) -> None:
        expected = self._may_claim(member, key)
        assert self.members[member].claim(_record(key)) is expected
        if expected:
            live = self.holding.get(key)
            # never a second member while another's claim is live (claimed, lease running)
            assert live is None or live[0] == member or live[1] < self.clock()
            self.model[key] = Held(CLAIMED, member, self.clock() + LEASE, self.clock() + RETENTION)
            self.holding[key] = (member, self.clock() + LEASE)

    @rule(member=st.sampled_from(MEMBERS), key=st.sampled_from(KEYS), ok=st.booleans())
    def finish(self, member: str, key: str, ok: bool) -> None:
        held = self._live(key)
        expected = held is not None and held.state == CLAIMED and held.member == member
        error = None if ok else "S3 PutObject: SlowDown"
        assert self.members[member].finish(_record(key), error=error) is expected
        if expected and held is not None:
            state = DONE if ok else FAILED
            self.model[key] = Held(state, member, self.clock() + LEASE, self.clock() + RETENTION)
            self.holding.pop(key, None)

    @rule(minutes=st.integers(min_value=1, max_value=15))
    def wait(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    @rule(days=st.sampled_from((1, 29, 31)))
    def age(self, days: int) -> None:
        """Days pass: up to RETENTION's edge, or past it (what was written expires)."""
        self.clock.advance(days=days)

    @invariant()
    def the_table_says_what_the_model_says(self) -> None:
        claims, _runs = self.members["x"].items()
        live = {k: h for k, h in self.model.items() if h.expires > self.clock()}
        assert {k: (c.state, c.member_id) for k, c in claims.items()} == {
            k: (h.state, h.member) for k, h in live.items()
        }

    @invariant()
    def the_job_outlives_every_item_written_under_it(self) -> None:
        """Kept alive by the members' writes (a job running longer than RETENTION)."""
        items = self.dynamodb.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": JOB_PREFIX + self.job_id}},
            ConsistentRead=True,
        )["Items"]
        expiry = {i["sk"]["S"]: float(i[EXPIRES_AT]["N"]) for i in items}
        job = expiry.pop("job")
        assert all(job >= when for when in expiry.values())
        assert job > self.clock().timestamp() or all(
            when <= self.clock().timestamp() for when in expiry.values()
        )  # alive while anything under it is


def test_claims_follow_the_rule_whatever_the_members_do() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with mock_aws():
        Claims.dynamodb = boto3.session.Session(region_name=REGION).client("dynamodb")
        Claims.dynamodb.create_table(**table_definition(TABLE))
        run_state_machine_as_test(
            Claims,
            settings=settings(
                max_examples=25,
                stateful_step_count=30,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
