"""`Ledger.record_many` (moto): the records of many objects in TransactWriteItems requests,
with the end state and the per-record results of `record` called for each in order.

AWS (TransactWriteItems API reference, "Amazon DynamoDB Transactions: How it works"): up to
100 actions and 4 MB of items per request, all or nothing; a cancelled request answers
TransactionCanceledException with one CancellationReason per action, in request order, Code
"None" for an action that was not the cause; ReturnValuesOnConditionCheckFailure ALL_OLD
returns the refused item in its reason; a ClientRequestToken makes a repeat within 10 minutes
succeed without writing again. moto 5.2.5 does the first three but ignores the token (a
repeat of a committed transaction is cancelled by its own writes there): see
docs/testing.md and tests/reliability/test_ledger_transactions.py.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from agent.errors import PermanentError, RetryableError
from agent.events import EventKind
from agent.records import VersionRecord
from agent.storage.ledger import LATEST, VERSION_PREFIX, Ledger, object_pk, table_definition
from tests.support.aws_hooks import Fault, inject, record_calls
from tests.support.ledger_table import BUCKET, T0, TABLE, ledger_table, put_event, stored_version

event = put_event  # this file's name for it


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with ledger_table() as client:
        yield client


def stored(key: str, version_id: str | None = "v1", sequencer: str = "10", volume: str = "vol-a"):
    return stored_version(key, version_id, sequencer, volume_id=volume)


def marker(key: str, version_id: str, sequencer: str) -> VersionRecord:
    e = event(key, version_id, sequencer, EventKind.REMOVED, delete_marker=True)
    return VersionRecord.for_event(e, backup_time=T0, volume_id="vol-a")


def removal(key: str, version_id: str | None, sequencer: str) -> VersionRecord:
    e = event(key, version_id, sequencer, EventKind.REMOVED)
    return VersionRecord.for_event(e, backup_time=T0, volume_id="vol-a")


def items(dynamodb: Any, table: str = TABLE) -> list[dict[str, Any]]:
    found = dynamodb.scan(TableName=table)["Items"]  # test-side inspection only
    return sorted(found, key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


def sequentially(dynamodb: Any, records: list[VersionRecord], **ledger: Any) -> list[Any]:
    """The oracle: `record` of each record in order, on a table of its own."""
    dynamodb.create_table(**{**table_definition("oracle"), "TableName": "oracle"})
    oracle = Ledger(dynamodb, "oracle", **ledger)
    return [oracle.record(r) for r in records]


def same_items(dynamodb: Any) -> None:
    assert items(dynamodb) == items(dynamodb, "oracle")


# -- requests -------------------------------------------------------------------------------


def test_ten_new_versions_of_ten_keys_are_one_transaction(dynamodb):
    records = [stored(f"reports/{n}.txt") for n in range(10)]
    calls = record_calls(dynamodb)

    assert Ledger(dynamodb, TABLE).record_many(records) == [True] * 10

    assert calls.operations() == ["TransactWriteItems"]
    (request,) = calls.of("TransactWriteItems")
    assert len(request["TransactItems"]) == 20
    assert request["ClientRequestToken"]
    assert sequentially(dynamodb, records) == [True] * 10
    same_items(dynamodb)


def test_a_transaction_holds_at_most_50_records_100_actions(dynamodb):
    records = [stored(f"reports/{n}.txt") for n in range(120)]
    calls = record_calls(dynamodb)

    assert Ledger(dynamodb, TABLE).record_many(records) == [True] * 120

    sizes = [len(r["TransactItems"]) for r in calls.of("TransactWriteItems")]
    assert sizes == [100, 100, 40]
    tokens = {r["ClientRequestToken"] for r in calls.of("TransactWriteItems")}
    assert len(tokens) == 3  # one token per request, never reused for another


def test_large_items_split_requests_under_the_size_limit(dynamodb, monkeypatch):
    monkeypatch.setattr("agent.storage.ledger.TRANSACT_BYTES", 6_000)
    records = [stored(f"reports/{n}.txt") for n in range(10)]  # ~2.3 KB of JSON each
    calls = record_calls(dynamodb)

    assert Ledger(dynamodb, TABLE).record_many(records) == [True] * 10

    sizes = [len(r["TransactItems"]) // 2 for r in calls.of("TransactWriteItems")]
    assert sum(sizes) == 10 and len(sizes) > 1 and max(sizes) <= 3


def test_each_put_carries_todays_condition(dynamodb):
    calls = record_calls(dynamodb)
    Ledger(dynamodb, TABLE).record_many([stored("a.txt")])
    version, latest = calls.of("TransactWriteItems")[0]["TransactItems"]
    assert version["Put"]["Item"]["sk"] == {"S": VERSION_PREFIX + "v:v1"}
    assert version["Put"]["ConditionExpression"] == "attribute_not_exists(pk)"
    assert latest["Put"]["Item"]["sk"] == {"S": LATEST}
    assert latest["Put"]["ConditionExpression"] == (
        "attribute_not_exists(pk) OR (begins_with(order_key, :format) AND order_key < :order"
        " AND (attribute_not_exists(settled_through) OR settled_through < :order))"
    )
    assert {a["Put"]["ReturnValuesOnConditionCheckFailure"] for a in (version, latest)} == {
        "ALL_OLD"
    }


def test_each_records_actions_are_built_once_even_when_sent_again(dynamodb, monkeypatch):
    """Sizing a request and sending it (and sending it again after a cancellation) use the
    same actions: `_new_version_actions` runs once per batched record (the last review)."""
    ledger = Ledger(dynamodb, TABLE)
    ledger.record(stored("b.txt"))  # b's transaction is cancelled; a and c are sent again
    built: list[str] = []
    make = Ledger._new_version_actions

    def counted(self: Ledger, record: VersionRecord) -> list[dict[str, Any]]:
        built.append(record.key)
        return make(self, record)

    monkeypatch.setattr(Ledger, "_new_version_actions", counted)
    calls = record_calls(dynamodb)

    assert ledger.record_many([stored("a.txt"), stored("b.txt"), stored("c.txt")]) == [
        True,
        False,
        True,
    ]

    assert len(calls.of("TransactWriteItems")) == 2
    assert sorted(built) == ["a.txt", "b.txt", "c.txt"]


# -- cancellations --------------------------------------------------------------------------


def test_a_duplicate_goes_alone_and_the_others_are_sent_again(dynamodb):
    ledger = Ledger(dynamodb, TABLE)
    ledger.record(stored("b.txt"))
    records = [stored("a.txt"), stored("b.txt"), stored("c.txt")]
    calls = record_calls(dynamodb)

    assert ledger.record_many(records) == [True, False, True]

    ops = calls.operations()
    assert ops[:2] == ["TransactWriteItems", "TransactWriteItems"]
    assert len(calls.of("TransactWriteItems")[1]["TransactItems"]) == 4  # a and c again
    assert ops[2:] == ["PutItem", "PutItem"]  # b through `record`: version, LATEST
    assert sequentially(dynamodb, [stored("b.txt"), *records]) == [True, True, False, True]
    same_items(dynamodb)


def test_an_out_of_order_version_is_kept_and_latest_stays(dynamodb):
    ledger = Ledger(dynamodb, TABLE)
    newer = stored("a.txt", "v2", "20")
    ledger.record(newer)

    older = stored("a.txt", "v1", "10")
    assert ledger.record_many([older, stored("b.txt")]) == [True, True]

    assert ledger.latest(BUCKET, "a.txt") == newer
    assert ledger.get_version(BUCKET, "a.txt", "v:v1") == older


def test_several_records_of_a_key_keep_their_order(dynamodb):
    records = [
        stored("a.txt", "v1", "10"),
        stored("a.txt", "v2", "20"),
        marker("a.txt", "m1", "30"),
        removal("a.txt", "m1", "40"),
        stored("b.txt", "v1", "10"),
    ]
    calls = record_calls(dynamodb)
    ledger = Ledger(dynamodb, TABLE)

    results = ledger.record_many(records)

    assert calls.operations()[0] == "TransactWriteItems"
    assert len(calls.of("TransactWriteItems")[0]["TransactItems"]) == 4  # a's first, b's
    assert results == sequentially(dynamodb, records) == [True] * 5
    same_items(dynamodb)
    assert ledger.latest(BUCKET, "a.txt") == records[1]  # the marker's removal uncovers v2


def test_a_put_recorded_after_its_own_removal_does_not_become_latest(dynamodb):
    """The removal was processed while the version's copy was still being written: the
    put goes through `record` (LATEST derived again), not the transaction."""
    ledger = Ledger(dynamodb, TABLE)
    previous = stored("a.txt", "v1", "10")
    ledger.record(previous)
    ledger.record(removal("a.txt", "v2", "30"))
    calls = record_calls(dynamodb)

    assert ledger.record_many([stored("a.txt", "v2", "20"), stored("b.txt")]) == [True, True]

    assert ledger.latest(BUCKET, "a.txt") == previous
    assert len(calls.of("TransactWriteItems")[0]["TransactItems"]) == 2  # b's alone


def test_a_conflict_sends_the_record_through_record_and_retries_the_rest(dynamodb):
    reasons = [{"Code": "TransactionConflict"}, {"Code": "None"}] + [{"Code": "None"}] * 4
    fault = inject(
        dynamodb,
        Fault(
            "TransactWriteItems",
            "TransactionCanceledException",
            times=1,
            extra={"CancellationReasons": reasons},
        ),
    )
    records = [stored(f"{n}.txt") for n in range(3)]
    calls = record_calls(dynamodb)

    assert Ledger(dynamodb, TABLE).record_many(records) == [True, True, True]

    assert fault.injected == 1
    assert calls.operations() == ["TransactWriteItems", "TransactWriteItems", "PutItem", "PutItem"]
    assert len(calls.of("TransactWriteItems")[1]["TransactItems"]) == 4
    sequentially(dynamodb, records)
    same_items(dynamodb)


def test_a_cancellation_without_reasons_sends_every_record_alone(dynamodb):
    inject(dynamodb, Fault("TransactWriteItems", "TransactionCanceledException", times=1))
    records = [stored(f"{n}.txt") for n in range(3)]
    calls = record_calls(dynamodb)

    assert Ledger(dynamodb, TABLE).record_many(records) == [True] * 3

    assert calls.operations() == ["TransactWriteItems"] + ["PutItem"] * 6


# -- failures -------------------------------------------------------------------------------


def test_a_throttled_transaction_fails_its_records_retryably_and_writes_nothing(dynamodb):
    inject(dynamodb, Fault("TransactWriteItems", "ProvisionedThroughputExceededException"))
    ledger = Ledger(dynamodb, TABLE)
    ledger.record(stored("b.txt", "v1", "10"))  # b's next version: in the transaction
    records = [stored("a.txt"), stored("b.txt", "v2", "20"), removal("c.txt", "v1", "30")]

    results = ledger.record_many(records)

    assert isinstance(results[0], RetryableError) and isinstance(results[1], RetryableError)
    assert "ProvisionedThroughputExceededException" in str(results[0])
    assert results[2] is True  # the removal, through `record`, still went through
    assert ledger.latest(BUCKET, "a.txt") is None
    assert ledger.latest(BUCKET, "b.txt") == stored("b.txt", "v1", "10")


def test_a_transaction_still_in_progress_is_retryable(dynamodb):
    inject(dynamodb, Fault("TransactWriteItems", "TransactionInProgressException"))
    (result,) = Ledger(dynamodb, TABLE).record_many([stored("a.txt")])
    assert isinstance(result, RetryableError)


def test_a_request_refused_whole_is_made_one_record_at_a_time(dynamodb):
    inject(dynamodb, Fault("TransactWriteItems", "ValidationException", times=1))
    records = [stored(f"{n}.txt") for n in range(2)]
    calls = record_calls(dynamodb)

    assert Ledger(dynamodb, TABLE).record_many(records) == [True, True]
    assert calls.operations() == ["TransactWriteItems"] + ["PutItem"] * 4


def test_a_record_whose_own_write_fails_gets_its_error_and_the_others_go_through(dynamodb):
    inject(
        dynamodb,
        Fault(
            "PutItem",
            "AccessDeniedException",
            when=lambda p: p["Item"]["pk"]["S"] == object_pk(BUCKET, "denied.txt"),
        ),
    )
    records = [removal("denied.txt", "v1", "10"), stored("a.txt")]
    results = Ledger(dynamodb, TABLE).record_many(records)
    assert isinstance(results[0], PermanentError) and results[1] is True


# -- the oracle: `record` of each, in order -------------------------------------------------

KEYS = ["k1.txt", "k2.txt", "k3.txt"]
VERSIONS = ["v1", "v2", "v3", "null"]
SEQUENCERS = ["10", "20", "30", "40", "50"]
GROUPS = ("backup-events-1", "backup-events-2")


@st.composite
def a_record(draw: st.DrawFn) -> VersionRecord:
    key = draw(st.sampled_from(KEYS))
    version = draw(st.sampled_from(VERSIONS))
    sequencer = draw(st.sampled_from(SEQUENCERS))
    kind = draw(st.sampled_from(["put", "put", "put", "marker", "removal"]))
    if kind == "marker":
        return marker(key, version, sequencer)
    if kind == "removal":
        return removal(key, version, sequencer)
    # this ledger's volume, the other group's, or a record read back naming a third
    volume = draw(st.sampled_from(["vol-a", "vol-b", "vol-c"]))
    return stored(key, version, sequencer, volume)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Any], list[Any], list[VersionRecord]]:
    """(malformed items already there, records first (True: by the other replica group,
    False: by the ledger itself, which remembers its removals), the batch)."""
    malformed = draw(
        st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from([*VERSIONS, LATEST])), max_size=2)
    )
    before = draw(st.lists(st.tuples(st.booleans(), a_record()), max_size=5))
    batch = draw(st.lists(a_record(), min_size=1, max_size=10))
    return malformed, before, batch


def _malformed(key: str, version: str) -> dict[str, Any]:
    item = Ledger(None, TABLE)._item(stored(key, version), "")  # type: ignore[arg-type]
    item["sk"] = {"S": LATEST if version == LATEST else VERSION_PREFIX + f"v:{version}"}
    item["size"] = {"S": "not a number"}
    return item


def test_record_many_leaves_the_items_and_results_of_record_in_order():
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        tables = itertools.count()

        @settings(
            max_examples=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(history=histories())
        @example(  # a put after its own removal (the ledger remembers it): never LATEST
            history=(
                [],
                [(False, stored("k1.txt", "v1", "10")), (False, removal("k1.txt", "v2", "50"))],
                [stored("k1.txt", "v2", "30")],
            )
        )
        def check(history: tuple[list[Any], list[Any], list[VersionRecord]]) -> None:
            malformed, before, batch = history
            n = next(tables)
            names = (f"batched-{n}", f"oracle-{n}")
            ledgers = []
            for name in names:
                dynamodb.create_table(**{**table_definition(name), "TableName": name})
                for key, version in malformed:
                    dynamodb.put_item(TableName=name, Item=_malformed(key, version))
                other = Ledger(dynamodb, name, group=GROUPS[1], volume_id="vol-b")
                ledger = Ledger(dynamodb, name, group=GROUPS[0], volume_id="vol-a")
                for by_other, record in before:
                    (other if by_other else ledger).record(record)
                ledgers.append(ledger)

            batched = ledgers[0].record_many(batch)
            oracle = []
            for record in batch:
                try:
                    oracle.append(ledgers[1].record(record))
                except Exception as exc:  # compared by type below
                    oracle.append(exc)

            assert [type(r) if isinstance(r, Exception) else r for r in batched] == [
                type(r) if isinstance(r, Exception) else r for r in oracle
            ]
            assert items(dynamodb, names[0]) == items(dynamodb, names[1])
            for name in names:
                dynamodb.delete_table(TableName=name)

        check()


def test_two_callers_with_the_same_keys_in_opposite_orders_both_finish(dynamodb):
    """Each request holds its keys in sorted order, so two callers cannot wait on each
    other; each version is fresh for exactly one of them."""
    ledger = Ledger(dynamodb, TABLE)
    records = [stored(f"reports/{n}.txt") for n in range(10)]
    start = threading.Barrier(2)
    results: dict[str, list[Any]] = {}
    # Each caller, once it holds its first key, waits (2 s at most) for the other to hold
    # one too: taken in request order, the two would then wait on each other for good.
    first_held = threading.Barrier(2, timeout=2)
    holding = ledger._holding
    local = threading.local()

    @contextlib.contextmanager
    def held_then_met(pk: str) -> Iterator[None]:
        with holding(pk):
            if not getattr(local, "met", False):
                local.met = True
                with contextlib.suppress(threading.BrokenBarrierError):
                    first_held.wait()
            yield

    ledger._holding = held_then_met  # type: ignore[method-assign]

    def run(name: str, batch: list[VersionRecord]) -> None:
        start.wait()
        results[name] = ledger.record_many(batch)

    threads = [
        threading.Thread(target=run, args=("forward", records), daemon=True),
        threading.Thread(target=run, args=("backward", records[::-1]), daemon=True),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    fresh = [a + b for a, b in zip(results["forward"], results["backward"][::-1], strict=True)]
    assert fresh == [1] * 10
