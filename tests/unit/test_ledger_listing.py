"""`Ledger.keys` against moto: the partitions' Queries are in flight together, and the
listing is the sequential one it replaced (tests/support/key_index_reference.py) record for
record, Query for Query, error for error, with no thread left when it ends, stops or fails.

Pages are made small by adding `Limit` to each Query through a botocore hook (as
tests/functional/test_sharded_index.py does): DynamoDB then stops at `Limit` items and
returns a `LastEvaluatedKey`, as it does at 1 MB. Errors are injected before the request
(tests/support/aws_hooks.py), so botocore's own retries of throttling are not exercised
here: what reaches the listing is the error left after them ("The AWS SDKs for DynamoDB
automatically retry requests that receive this exception", https://docs.aws.amazon.com/
botocore/latest/reference/services/dynamodb/client/exceptions/
ProvisionedThroughputExceededException.html).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from moto import mock_aws

from agent.errors import BackupAgentError, PermanentError, RetryableError
from agent.records import VersionRecord
from agent.storage import key_index
from agent.storage import ledger as ledger_module
from agent.storage.ledger import Ledger, table_definition
from tests.support import key_index_reference
from tests.support.aws_hooks import Fault, inject
from tests.support.record_fields import numbered_record

BUCKET = "company-documents"
QUERY = "provide-client-params.dynamodb.Query"
_tables = itertools.count()


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")


def record(key: str, n: int) -> VersionRecord:
    return numbered_record(BUCKET, key, n)


def build(dynamodb: Any, keys: list[str], unsharded: set[str] | None = None) -> Ledger:
    """A table of `keys`' LATEST items, those in `unsharded` as the previous release wrote
    them (`gsi_bucket` = the bucket name)."""
    table = f"objects-{next(_tables)}"
    dynamodb.create_table(**table_definition(table))
    ledger = Ledger(dynamodb, table)
    for n, key in enumerate(keys, start=1):
        rec = record(key, n)
        if key not in (unsharded or set()):
            ledger.record(rec)
            continue
        body = {k: TypeSerializer().serialize(v) for k, v in rec.to_dict().items()}
        pk = {"S": f"{BUCKET}/{key}"}
        dynamodb.put_item(
            TableName=table, Item={**body, "pk": pk, "sk": {"S": "V#" + rec.version_token}}
        )
        index = {"gsi_bucket": {"S": BUCKET}, "gsi_key": {"S": key}}
        dynamodb.put_item(TableName=table, Item={**body, **index, "pk": pk, "sk": {"S": "LATEST"}})
    return ledger


class Pages:
    """Every Query's (key condition values, ExclusiveStartKey), each limited to `limit`
    items."""

    def __init__(self, dynamodb: Any, limit: int) -> None:
        self.limit = limit
        self.asked: list[tuple[str, str]] = []
        self._lock = threading.Condition()
        self._client = dynamodb
        dynamodb.meta.events.register(QUERY, self._seen)

    def _seen(self, params: dict[str, Any], **_: Any) -> None:
        params["Limit"] = self.limit
        start = params.get("ExclusiveStartKey")
        with self._lock:
            self.asked.append((repr(params["ExpressionAttributeValues"]), repr(start)))
            self._lock.notify_all()

    def wait_for_next_pages(self, count: int) -> None:
        """Until `count` Queries asked for a page after the first (20 s at most)."""
        with self._lock:
            self._lock.wait_for(
                lambda: sum(start != "None" for _c, start in self.asked) >= count, timeout=20
            )

    def take(self) -> Counter[tuple[str, str]]:
        with self._lock:
            asked, self.asked = Counter(self.asked), []
        return asked

    def close(self) -> None:
        self._client.meta.events.unregister(QUERY, self._seen)


@pytest.fixture
def pages(dynamodb: Any) -> Iterator[Pages]:
    counted = Pages(dynamodb, limit=3)
    yield counted
    counted.close()


KEYS = [f"{d}/{n:03}" for d in ("a", "b", "c") for n in range(40)]


def test_the_partitions_first_pages_are_in_flight_together(dynamodb):
    """Before, each Query waited for the one before it: the first two never met."""
    ledger = build(dynamodb, KEYS[:40])
    met = threading.Barrier(2, timeout=20)
    calls = itertools.count()

    def meet(**_: Any) -> None:
        if next(calls) < 2:
            met.wait()  # BrokenBarrierError after 20 s if the second Query never comes

    dynamodb.meta.events.register("before-call.dynamodb.Query", meet)
    try:
        assert [r.key for r in ledger.keys(BUCKET)] == KEYS[:40]
    finally:
        dynamodb.meta.events.unregister("before-call.dynamodb.Query", meet)


def test_the_listing_is_the_sequential_one_record_for_record_and_query_for_query(dynamodb, pages):
    unsharded = set(KEYS[::7])
    ledger = build(dynamodb, KEYS, unsharded)
    # the index, eventually consistent, may show a key in two partitions while it moves to
    # its shard: a stale copy under the bucket name alone (an older version's item)
    stale = record("b/010", 999)
    body = {k: TypeSerializer().serialize(v) for k, v in stale.to_dict().items()}
    dynamodb.put_item(
        TableName=ledger.table,
        Item={
            **body,
            "pk": {"S": f"{BUCKET}/b/010"},
            "sk": {"S": "V#" + stale.version_token},
            "gsi_bucket": {"S": BUCKET},
            "gsi_key": {"S": "b/010"},
        },
    )
    pages.take()
    for prefix, after in [("", ""), ("b/", ""), ("b/", "b/020"), ("a/", "b/"), ("", "c/038")]:
        want = list(key_index_reference.keys(ledger, BUCKET, prefix, after))
        needed = pages.take()
        got = list(ledger.keys(BUCKET, prefix, after))
        assert got == want, (prefix, after)
        assert pages.take() == needed, (prefix, after)  # one Query per partition page
    assert [r.version_id for r in ledger.keys(BUCKET, "b/010")] == ["v51"]  # not the stale


def _failing(partition: str) -> Any:
    def when(params: dict[str, Any]) -> bool:
        value = params["ExpressionAttributeValues"].get(":b")
        return value == {"S": partition} and "ExclusiveStartKey" in params

    return when


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("ProvisionedThroughputExceededException", RetryableError),
        ("AccessDeniedException", PermanentError),
    ],
)
def test_a_query_failing_in_the_middle_of_a_partition_reaches_the_consumer_as_before(
    dynamodb, pages, code, error
):
    ledger = build(dynamodb, KEYS)
    failing = key_index.partition(BUCKET, "b/000")
    inject(dynamodb, Fault("Query", code, when=_failing(failing)))
    before = set(threading.enumerate())

    def listed(records: Iterator[VersionRecord]) -> tuple[list[str], BackupAgentError]:
        got: list[str] = []
        with pytest.raises(error) as raised:
            for rec in records:
                got.append(rec.key)
        return got, raised.value

    want, want_error = listed(key_index_reference.keys(ledger, BUCKET))
    got, got_error = listed(ledger.keys(BUCKET))

    assert got == want  # the records the merge could give before it needed the page
    assert 0 < len(got) < len(KEYS)
    assert str(got_error) == str(want_error)
    assert str(got_error).startswith(f"DynamoDB Query: {code}: ")
    assert type(got_error.__cause__) is type(want_error.__cause__)  # botocore's ClientError
    assert set(threading.enumerate()) == before


def test_a_consumer_that_stops_after_a_few_records_leaves_no_thread(dynamodb, pages):
    """`find --limit` takes a few keys and drops the listing; a restore then forks only if
    it is the process's one thread (agent/restore/workers.py `usable`)."""
    ledger = build(dynamodb, KEYS)
    before = set(threading.enumerate())
    assert [r.key for r in itertools.islice(ledger.keys(BUCKET), 4)] == KEYS[:4]
    assert set(threading.enumerate()) == before
    pages.take()
    records = ledger.keys(BUCKET, "b/")
    assert next(records).key == "b/000"
    pages.wait_for_next_pages(1)  # the read-ahead asked for, not cancelled by the close
    records.close()
    assert set(threading.enumerate()) == before
    # by the first record: each partition's first page, and at most the one after it
    asked = Counter(condition for condition, _start in pages.take())
    assert len(asked) == key_index.SHARDS + 1
    assert max(asked.values()) == 2  # 3 items a page: the shards' second pages were asked for


def test_each_item_is_parsed_once_in_the_consumers_thread_as_the_merge_yields_it(
    dynamodb, monkeypatch
):
    """The pool's threads only read pages: parse_item (Python, under the GIL) runs in the
    consumer's thread, once per key the merge yields and for nothing it drops: a copy of a
    key in a second partition and the keys past a listing's prefix are not parsed. Parsed in
    the pool (session 10) the threads took turns with the consumer: find over 20,000 items
    from memory took 1.09 s against 0.85 s."""
    ledger = build(dynamodb, KEYS)
    stale = {"pk": {"S": f"{BUCKET}/a/005"}, "sk": {"S": "V#copy"}}
    stale |= {"gsi_bucket": {"S": BUCKET}, "gsi_key": {"S": "a/005"}}  # a/005 twice
    dynamodb.put_item(TableName=ledger.table, Item=stale)
    parsed: list[str] = []
    real = ledger_module.parse_item

    def spy(item: Any) -> Any:
        assert threading.current_thread() is consumer
        parsed.append(item["gsi_key"]["S"])
        return real(item)

    consumer = threading.current_thread()
    monkeypatch.setattr(ledger_module, "parse_item", spy)
    assert [r.key for r in ledger.keys(BUCKET)] == KEYS
    assert parsed == KEYS  # once each, in order: the stale copy was not parsed
    parsed.clear()
    under = [k for k in KEYS if k.startswith("b/")]
    assert [r.key for r in ledger.keys(BUCKET, "b/")] == under
    assert parsed == under
    parsed.clear()
    # resumed after b/010, a Query asks for the keys after it, not for the prefix: the pages
    # hold c/ keys too, which the merge stops at, unparsed
    after = [k for k in under if k > "b/010"]
    assert [r.key for r in ledger.keys(BUCKET, "b/", after="b/010")] == after
    assert parsed == after


def test_a_rejection_is_counted_only_for_an_item_the_listing_yields(dynamodb):
    """A malformed stale copy of a key in two partitions is skipped by the merge and never
    parsed, as the sequential listing never parsed it: no rejection. A malformed
    LATEST the listing reaches is rejected and derived from the key's versions, as before."""
    ledger = build(dynamodb, KEYS[:20])
    index = {"gsi_bucket": {"S": BUCKET}, "gsi_key": {"S": "a/005"}}
    stale = {"pk": {"S": f"{BUCKET}/a/005"}, "sk": {"S": "V#junk"}, **index}  # no fields
    dynamodb.put_item(TableName=ledger.table, Item=stale)
    listed = [(r.key, r.version_id) for r in ledger.keys(BUCKET)]
    assert listed == [(r.key, r.version_id) for r in key_index_reference.keys(ledger, BUCKET)]
    assert ("a/005", "v6") in listed
    assert len(ledger.rejections) == 0

    bad = {"pk": {"S": f"{BUCKET}/a/007"}, "sk": {"S": "LATEST"}, "size": {"S": "big"}}
    item = dynamodb.get_item(TableName=ledger.table, Key={k: bad[k] for k in ("pk", "sk")})
    dynamodb.put_item(TableName=ledger.table, Item={**item["Item"], **bad})
    assert [(r.key, r.version_id) for r in ledger.keys(BUCKET)] == listed  # derived again
    assert len(ledger.rejections) == 1


class _RepeatingIndex:
    """A DynamoDB client whose key index answers every page with one more page that starts
    where this one started: the LastEvaluatedKey a paginator would follow for ever."""

    def __init__(self) -> None:
        self.queries = 0

    def query(self, **request: Any) -> dict[str, Any]:
        self.queries += 1
        start = request.get("ExclusiveStartKey")
        last = start or {"gsi_bucket": {"S": f"{BUCKET}#0"}, "gsi_key": {"S": "a"}}
        return {"Items": [], "Count": 0, "LastEvaluatedKey": last}


def test_a_page_that_points_back_at_its_own_start_is_an_error_not_a_loop() -> None:
    """boto3's paginator refuses a next token equal to the one just sent ("The same next
    token was received twice"); the listing reads its pages itself and refuses it too, as a
    classified DynamoDB Query error, with no thread left."""
    client = _RepeatingIndex()
    ledger = Ledger(client, "t")  # type: ignore[arg-type]
    before = set(threading.enumerate())
    with pytest.raises(BackupAgentError, match="DynamoDB Query"):
        list(ledger.keys(BUCKET))
    assert set(threading.enumerate()) == before
    assert client.queries <= 2 * (key_index.SHARDS + 1)  # a first page and its repeat each
