"""SQS message bodies → ObjectEvent: every documented shape, the malformed ones, and keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import quote_plus

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.errors import MalformedMessage
from agent.events import EventKind, IgnoredEvent, ObjectEvent, event_kind, parse_message
from tests.support.events import event_text, load_event, notification, s3_record

BUCKET = "company-documents"

# -- every fixture parses to the right event ------------------------------------------------


def only_event(name: str) -> ObjectEvent:
    parsed = parse_message(event_text(name))
    assert not parsed.is_test_event
    assert len(parsed.events) == 1
    return parsed.events[0]


def test_s3_put_keeps_version_etag_size_sequencer_time_and_decodes_the_key():
    event = only_event("s3-put.json")
    assert event == ObjectEvent(
        kind=EventKind.CREATED,
        bucket=BUCKET,
        key="reports/q1 summary ✓ 100%.txt",
        event_name="ObjectCreated:Put",
        event_time=datetime(2026, 11, 23, 10, 15, 30, 123000, tzinfo=UTC),
        version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        etag="d41d8cd98f00b204e9800998ecf8427e",
        size=1024,
        sequencer="0055AED6DCD90281E5",
        delete_marker=False,
    )


def test_multi_record_message_yields_every_record_in_order():
    parsed = parse_message(event_text("s3-multi-record.json"))
    assert [(e.event_name, e.key, e.size) for e in parsed.events] == [
        ("ObjectCreated:Put", "photos/HappyFace.jpg", 2048),
        ("ObjectCreated:Copy", "photos/SadFace (copy).jpg", 4096),
    ]
    assert all(e.kind is EventKind.CREATED for e in parsed.events)


def test_complete_multipart_upload_is_a_created_event_with_the_multipart_etag():
    event = only_event("s3-complete-multipart.json")
    assert event.kind is EventKind.CREATED
    assert event.event_name == "ObjectCreated:CompleteMultipartUpload"
    assert event.key == "archives/2026/disk image.tar"
    assert event.size == 26214400
    assert event.etag == "6f2d3c6e7d2f0c34d6b2c1d0e4f5a6b7-4"


def test_object_removed_delete_is_a_removal_of_that_version_not_a_marker():
    event = only_event("s3-delete.json")
    assert event.kind is EventKind.REMOVED
    assert event.key == "reports/old draft.txt"
    assert event.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert (event.size, event.etag, event.delete_marker) == (None, None, False)
    assert event.sequencer == "0055AED6DCD9028A11"


def test_delete_marker_created_is_a_removal_flagged_as_a_marker():
    event = only_event("s3-delete-marker.json")
    assert event.kind is EventKind.REMOVED
    assert event.delete_marker is True
    assert event.event_name == "ObjectRemoved:DeleteMarkerCreated"
    assert event.version_id == "fE3HsQ0k4_Jk9nCbYwqnSmuOQ1V2X6ZT"
    assert event.key == "reports/q1 summary ✓ 100%.txt"


def test_s3_test_event_is_recognised_and_carries_no_events():
    parsed = parse_message(event_text("s3-test-event.json"))
    assert parsed.is_test_event is True
    assert parsed.events == ()
    assert parsed.ignored == (IgnoredEvent("s3:TestEvent", BUCKET),)


def test_sns_envelope_unwraps_to_the_same_events_as_the_raw_notification():
    wrapped = parse_message(event_text("sns-envelope.json"))
    raw = parse_message(event_text("s3-put.json"))  # what raw message delivery sends
    assert wrapped == raw
    assert wrapped.events[0].key == "reports/q1 summary ✓ 100%.txt"


def test_sns_envelope_of_a_test_event_is_a_test_event():
    envelope = load_event("sns-envelope.json")
    envelope["Message"] = event_text("s3-test-event.json")
    assert parse_message(json.dumps(envelope)).is_test_event


def test_eventbridge_object_created_keeps_the_key_as_it_is():
    event = only_event("eventbridge-object-created.json")
    assert event == ObjectEvent(
        kind=EventKind.CREATED,
        bucket=BUCKET,
        key="reports/q2 summary+final.txt",  # EventBridge does not encode: '+' stays '+'
        event_name="ObjectCreated:PutObject",
        event_time=datetime(2026, 11, 23, 10, 40, tzinfo=UTC),
        version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
        etag="b1946ac92492d2347c6235b4d2611184",
        size=5,
        sequencer="617f08299329d189",
        delete_marker=False,
    )


def test_eventbridge_object_deleted_with_a_delete_marker():
    event = only_event("eventbridge-object-deleted.json")
    assert event.kind is EventKind.REMOVED
    assert event.delete_marker is True
    assert event.event_name == "ObjectRemoved:DeleteObject"
    assert event.version_id == "1QW9g1Z99LUNbvaaYVpW9xDlOLU.qxgF"
    assert event.size is None


def test_eventbridge_permanent_delete_is_not_a_marker():
    document = load_event("eventbridge-object-deleted.json")
    document["detail"]["deletion-type"] = "Permanently Deleted"
    (event,) = parse_message(json.dumps(document)).events
    assert event.kind is EventKind.REMOVED and event.delete_marker is False


def test_bytes_bodies_parse_like_text():
    assert parse_message(event_text("s3-put.json").encode()) == parse_message(
        event_text("s3-put.json")
    )


def test_unversioned_put_without_version_or_sequencer_parses():
    (event,) = parse_message(notification(s3_record("a.txt", size=3, eTag="abc"))).events
    assert (event.version_id, event.sequencer, event.size) == (None, None, 3)


# -- lifecycle expirations, restores and the names ignored on purpose ----------------------
# Event types: https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-event-types-and-destinations.html
# S3 Lifecycle reports its deletions as LifecycleExpiration:*, never as ObjectRemoved:*
# ("These event notifications don't alert you for automatic deletes from Lifecycle policies").


def test_lifecycle_expiration_delete_is_a_removal_under_its_own_name():
    # https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-configure-notification.html
    event = only_event("s3-lifecycle-expiration-delete.json")
    assert event.kind is EventKind.REMOVED
    assert event.event_name == "LifecycleExpiration:Delete"  # recorded: not a user's delete
    assert (event.key, event.delete_marker, event.version_id) == ("expiration/delete", False, None)
    assert event.sequencer == "0055AED6DCD90281E5"


def test_lifecycle_expiration_delete_marker_is_a_removal_flagged_as_a_marker():
    event = only_event("s3-lifecycle-expiration-delete-marker.json")
    assert event.kind is EventKind.REMOVED
    assert event.delete_marker is True
    assert event.event_name == "LifecycleExpiration:DeleteMarkerCreated"
    assert event.version_id == "Lx3bqbK1Z7tzXDGQm1AR8B0yk4ABwMAu"


@pytest.mark.parametrize(
    ("lifecycle", "user"),
    [
        ("LifecycleExpiration:Delete", "ObjectRemoved:Delete"),
        ("LifecycleExpiration:DeleteMarkerCreated", "ObjectRemoved:DeleteMarkerCreated"),
    ],
)
def test_a_lifecycle_expiration_is_the_same_deletion_as_its_object_removed_twin(lifecycle, user):
    (expired,) = parse_message(put_with(eventName=lifecycle, size=None, eTag=None)).events
    (deleted,) = parse_message(put_with(eventName=user, size=None, eTag=None)).events
    assert (expired.kind, expired.delete_marker, expired.version_token, expired.order_key) == (
        deleted.kind,
        deleted.delete_marker,
        deleted.version_token,
        deleted.order_key,
    )
    assert expired.event_name == lifecycle != deleted.event_name


def test_eventbridge_lifecycle_expiration_takes_the_s3_notification_name():
    # https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html ("Object deleted
    # (using lifecycle expiration)"): reason "Lifecycle Expiration".
    event = only_event("eventbridge-object-deleted-lifecycle.json")
    assert event.kind is EventKind.REMOVED
    assert event.event_name == "LifecycleExpiration:DeleteMarkerCreated"
    assert event.delete_marker is True
    document = load_event("eventbridge-object-deleted-lifecycle.json")
    document["detail"]["deletion-type"] = "Permanently Deleted"
    (permanent,) = parse_message(json.dumps(document)).events
    assert (permanent.event_name, permanent.delete_marker) == ("LifecycleExpiration:Delete", False)


def test_restore_completed_is_a_created_event_for_that_version():
    # glacierEventData is only visible for s3:ObjectRestore:Completed events
    # (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html)
    event = only_event("s3-restore-completed.json")
    assert event.kind is EventKind.CREATED
    assert event.restored is True
    assert event.event_name == "ObjectRestore:Completed"
    assert event.key == "archives/2025/ledger.csv"
    assert event.version_id == "KKsjUC1.6gIjqtvhfg5AdMI0eCePIiT3"
    assert (event.size, event.etag) == (1024, "d41d8cd98f00b204e9800998ecf8427e")
    assert event.version_token == "v:KKsjUC1.6gIjqtvhfg5AdMI0eCePIiT3"


def test_a_restore_never_takes_a_sequencer_as_the_versions_order():
    """S3 sends sequencers to order PUTs and DELETEs of a key; a restore happens long after
    newer versions may have been written, so its sequencer must not place the version."""
    document = load_event("s3-restore-completed.json")
    document["Records"][0]["s3"]["object"]["sequencer"] = "00FFFFFFFFFFFFFFFF"
    (event,) = parse_message(json.dumps(document)).events
    assert event.sequencer is None


def test_eventbridge_restore_completed_is_a_created_event():
    event = only_event("eventbridge-object-restore-completed.json")
    assert (event.kind, event.event_name, event.restored) == (
        EventKind.CREATED,
        "ObjectRestore:Completed",
        True,
    )
    assert (event.key, event.size, event.sequencer) == ("example-key", 5, None)
    assert event.version_id == "KKsjUC1.6gIjqtvhfg5AdMI0eCePIiT3"


IGNORED_NAMES = [
    "ObjectRestore:Post",
    "ObjectRestore:Delete",
    "Replication:OperationFailedReplication",
    "Replication:OperationMissedThreshold",
    "Replication:OperationReplicatedAfterThreshold",
    "Replication:OperationNotTracked",
    "ObjectTagging:Put",
    "ObjectTagging:Delete",
    "ObjectAcl:Put",
    "IntelligentTiering",
    "LifecycleTransition",
    "ReducedRedundancyLostObject",
    "ObjectAnnotation:Put",  # not in the list above: a name S3 may add later
    "SomethingNew:Happened",
]


@pytest.mark.parametrize("name", IGNORED_NAMES)
def test_other_event_names_are_ignored_on_purpose_never_malformed(name):
    parsed = parse_message(put_with(eventName=name))
    assert parsed.events == ()
    assert parsed.ignored == (IgnoredEvent(name, BUCKET, "reports/q1 summary ✓ 100%.txt"),)


@pytest.mark.parametrize(
    "fixture", ["s3-restore-post.json", "s3-object-tagging-put.json", "s3-intelligent-tiering.json"]
)
def test_documented_examples_of_ignored_events_parse_as_ignored(fixture):
    parsed = parse_message(event_text(fixture))
    (ignored,) = parsed.ignored
    assert parsed.events == () and ignored.bucket == BUCKET and ignored.key


def test_an_ignored_record_is_not_held_to_the_shape_of_object_events():
    """A future event type may carry other fields; it is ignored whatever its shape."""
    document = load_event("s3-intelligent-tiering.json")
    del document["Records"][0]["s3"]["object"]
    document["Records"][0]["eventTime"] = "not a time"
    parsed = parse_message(json.dumps(document))
    assert parsed.ignored == (IgnoredEvent("IntelligentTiering", BUCKET, None),)


def test_a_message_with_a_put_and_an_ignored_record_keeps_the_put():
    body = notification(
        s3_record("a.txt", size=1, sequencer="01"),
        s3_record("a.txt", event_name="ObjectTagging:Put"),
    )
    parsed = parse_message(body)
    assert [e.key for e in parsed.events] == ["a.txt"]
    assert [i.event_name for i in parsed.ignored] == ["ObjectTagging:Put"]


@pytest.mark.parametrize(
    "detail_type",
    [
        "Object Restore Initiated",
        "Object Restore Expired",
        "Object Storage Class Changed",
        "Object Access Tier Changed",
        "Object ACL Updated",
        "Object Tags Added",
        "Object Tags Deleted",
        "Object Teleported",  # a detail-type EventBridge may add later
    ],
)
def test_other_eventbridge_detail_types_are_ignored(detail_type):
    # https://docs.aws.amazon.com/AmazonS3/latest/userguide/EventBridge.html
    document = {**load_event("eventbridge-object-created.json"), "detail-type": detail_type}
    parsed = parse_message(json.dumps(document))
    assert parsed.events == ()
    assert parsed.ignored == (IgnoredEvent(detail_type, BUCKET, "reports/q2 summary+final.txt"),)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ObjectCreated:Put", EventKind.CREATED),
        ("s3:ObjectCreated:CompleteMultipartUpload", EventKind.CREATED),
        ("ObjectRestore:Completed", EventKind.CREATED),
        ("ObjectRemoved:Delete", EventKind.REMOVED),
        ("ObjectRemoved:DeleteMarkerCreated", EventKind.REMOVED),
        ("LifecycleExpiration:Delete", EventKind.REMOVED),
        ("s3:LifecycleExpiration:DeleteMarkerCreated", EventKind.REMOVED),
        ("ObjectRestore:Post", None),
        ("ObjectRestore:Delete", None),
        ("LifecycleTransition", None),
        ("s3:TestEvent", None),
    ],
)
def test_what_each_event_name_means(name, kind):
    assert event_kind(name) is kind


# -- malformed shapes raise MalformedMessage with a useful reason ---------------------------


def put_with(**changes: object) -> str:
    document = load_event("s3-put.json")
    obj = document["Records"][0]["s3"]["object"]
    for name, value in changes.items():
        target = document["Records"][0] if name in ("eventTime", "eventName") else obj
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return json.dumps(document)


def eventbridge_with(**detail_changes: object) -> str:
    document = load_event("eventbridge-object-created.json")
    for name, value in detail_changes.items():
        if value is None:
            document["detail"].pop(name, None)
        else:
            document["detail"][name] = value
    return json.dumps(document)


def sns_with(message: object) -> str:
    envelope = load_event("sns-envelope.json")
    if message is None:
        envelope.pop("Message")
    else:
        envelope["Message"] = message
    return json.dumps(envelope)


MALFORMED = {
    "not json": ("hello <xml/>", "body is not JSON"),
    "empty body": ("", "body is not JSON"),
    "a json list": ("[1, 2]", "expected a JSON object, got list"),
    "unknown shape": ('{"hello": 1}', "not an S3 notification"),
    "empty records": ('{"Records": []}', "'Records' is not a non-empty list"),
    "records not a list": ('{"Records": {"a": 1}}', "'Records' is not a non-empty list"),
    "record not an object": ('{"Records": ["x"]}', "Records[0] is not an object"),
    "no event name": (put_with(eventName=None), "Records[0].eventName is missing"),
    "no key": (put_with(key=None), "Records[0].s3.object.key is missing or not a string"),
    "key not a string": (put_with(key=7), "Records[0].s3.object.key is missing or not a string"),
    "bad utf-8 in key": (put_with(key="caf%E9.txt"), "is not valid percent-encoded UTF-8"),
    "empty key": (put_with(key=""), "Records[0]: empty object key"),
    "NUL in key": (put_with(key="a%00b"), "Records[0]: object key contains NUL"),
    "key too long": (put_with(key="k" * 1025), "object key longer than 1024 bytes"),
    "negative size": (put_with(size=-1), "Records[0].size is negative"),
    "size not a number": (put_with(size="big"), "Records[0].size is not a number"),
    "size a boolean": (put_with(size=True), "Records[0].size is not a number"),
    "sequencer not hex": (put_with(sequencer="XYZ"), "Records[0].sequencer is not a hex string"),
    "sequencer too long": (
        put_with(sequencer="0" * 65),
        "Records[0].sequencer is not a hex string",
    ),
    "versionId not a string": (put_with(versionId=12), "Records[0].versionId is not a string"),
    "no event time": (put_with(eventTime=None), "Records[0].eventTime is missing"),
    "bad event time": (put_with(eventTime="yesterday"), "'yesterday' is not an ISO-8601 time"),
    "sns message missing": (sns_with(None), "SNS envelope.Message is missing or not a string"),
    "sns message not json": (sns_with("not json"), "body is not JSON"),
    "sns message not an event": (sns_with('{"a": 1}'), "not an S3 notification"),
    "restore completed without a key": (
        put_with(eventName="ObjectRestore:Completed", key=None),
        "Records[0].s3.object.key is missing or not a string",
    ),
    "lifecycle expiration without a time": (
        put_with(eventName="LifecycleExpiration:Delete", eventTime=None),
        "Records[0].eventTime is missing",
    ),
    "eventbridge no object": (
        eventbridge_with(object=None),
        "detail.object is missing or not an object",
    ),
    "eventbridge no bucket": (
        eventbridge_with(bucket=None),
        "detail.bucket is missing or not an object",
    ),
}


@pytest.mark.parametrize(("body", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bodies_raise_with_the_reason(body, reason):
    with pytest.raises(MalformedMessage) as raised:
        parse_message(body)
    assert reason in str(raised.value)


def test_one_bad_record_makes_the_whole_message_malformed():
    body = notification(s3_record("good.txt", size=1), {"eventName": "ObjectCreated:Put"})
    with pytest.raises(MalformedMessage, match=r"Records\[1\]\.s3 is missing"):
        parse_message(body)


# -- keys: any S3 key survives S3's form encoding -------------------------------------------

S3_KEYS = (
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=400)
    .filter(lambda key: len(key.encode("utf-8")) <= 1024)
    .filter(bool)
)


def parse_key(encoded: str) -> str:
    """Parse a notification whose record carries `encoded` as the key, as S3 sent it."""
    record = s3_record("x", size=1)
    record["s3"]["object"]["key"] = encoded
    (event,) = parse_message(notification(record)).events
    return event.key


@given(key=S3_KEYS)
@example(key="with space/and+plus%25percent.txt")
@example(key="../../etc/passwd")
@example(key="ünïcødé/✓ data.csv")
@example(key="€" * 341)  # 1023 bytes
def test_any_key_round_trips_through_real_s3_encoding(key):
    assert parse_key(quote_plus(key, safe="/")) == key


@given(key=S3_KEYS)
def test_any_key_round_trips_through_moto_encoding_of_slashes(key):
    assert parse_key(quote_plus(key, safe="")) == key


@given(key=S3_KEYS)
def test_any_key_is_taken_verbatim_from_eventbridge(key):
    document = load_event("eventbridge-object-created.json")
    document["detail"]["object"]["key"] = key
    (event,) = parse_message(json.dumps(document)).events
    assert event.key == key


@given(key=S3_KEYS.map(lambda key: key + "€" * 342))  # 342 * 3 bytes > 1024
def test_keys_over_1024_utf8_bytes_are_rejected(key):
    with pytest.raises(MalformedMessage, match="longer than 1024 bytes"):
        parse_key(quote_plus(key, safe="/"))


# -- order_key: sequencers right-padded with zeros, time as the fallback --------------------


def event_with(
    sequencer: str | None = None,
    time: datetime = datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
    **kwargs: object,
) -> ObjectEvent:
    fields: dict = {
        "kind": EventKind.CREATED,
        "bucket": BUCKET,
        "key": "k",
        "event_name": "ObjectCreated:Put",
        "event_time": time,
        "sequencer": sequencer,
    }
    fields.update(kwargs)
    return ObjectEvent(**fields)


def test_shorter_sequencer_is_right_padded_not_compared_as_a_number():
    # As numbers 0x1 < 0x0F; S3's rule pads "1" to "10", which is after "0F".
    assert event_with("1").order_key > event_with("0F").order_key


def test_sequencers_equal_after_padding_are_the_same_point():
    assert event_with("ABC").order_key == event_with("ABC000").order_key


def test_sequencers_compare_without_regard_to_case():
    # S3 notifications use upper case, EventBridge lower case.
    assert event_with("617f08299329d189").order_key == event_with("617F08299329D189").order_key


HEX = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=64)


@given(a=HEX, b=HEX)
def test_order_key_follows_the_documented_padding_rule(a, b):
    width = max(len(a), len(b))
    expected = (a.upper().ljust(width, "0") > b.upper().ljust(width, "0")) - (
        a.upper().ljust(width, "0") < b.upper().ljust(width, "0")
    )
    key_a, key_b = event_with(a).order_key, event_with(b).order_key
    assert (key_a > key_b) - (key_a < key_b) == expected


def test_without_sequencers_the_event_time_orders():
    earlier = event_with(time=datetime(2026, 11, 23, 9, 59, 59, 999999, tzinfo=UTC))
    assert earlier.order_key < event_with().order_key


def test_the_second_orders_first_then_the_sequencer_or_the_time():
    """agent/order.py: time to the whole second first (the one thing every source has),
    then inside one second a sequencer sorts after a time-only event."""
    late_time = event_with(time=datetime(2099, 1, 1, tzinfo=UTC))
    assert event_with("0000000000000001").order_key < late_time.order_key
    same_second = event_with(time=datetime(2026, 11, 23, 10, 0, 0, 999999, tzinfo=UTC))
    assert event_with("0000000000000001").order_key > same_second.order_key


# -- version_token: one id per version, stable across deliveries ----------------------------


def test_version_token_is_identical_for_duplicate_deliveries():
    first = only_event("s3-put.json")
    again = only_event("sns-envelope.json")
    assert first.version_token == again.version_token == "v:096fKKXTRTtl3on89fVO.nfljtsv6qko"


def test_version_token_without_version_id_uses_the_padded_sequencer():
    assert event_with("abc").version_token == event_with("ABC0").version_token
    assert event_with("abc").version_token != event_with("abd").version_token


def test_null_version_id_is_not_a_version():
    assert event_with("ABC", version_id="null").version_token == event_with("ABC").version_token


def test_version_token_without_version_or_sequencer_uses_time_and_etag():
    token = event_with(etag="abc").version_token
    assert token == event_with(etag="abc").version_token
    assert token != event_with(etag="abd").version_token
    assert token != event_with(etag="abc", time=datetime(2026, 1, 1, tzinfo=UTC)).version_token


@given(key=S3_KEYS, version=st.text(min_size=1, max_size=40).filter(lambda v: v != "null"))
def test_version_token_depends_only_on_the_version_id_when_present(key, version):
    one = event_with("01", key=key, version_id=version)
    other = event_with("02", key=key, version_id=version, time=datetime(2027, 1, 1, tzinfo=UTC))
    assert one.version_token == other.version_token == "v:" + version


@pytest.mark.parametrize("sequencer", ["0x1F", "-1F", "+1F", " 1F", "1_F", "1F\n"])
def test_sequencers_must_be_plain_hex_digits(sequencer):
    with pytest.raises(MalformedMessage, match=r"Records\[0\]\.sequencer is not a hex string"):
        parse_message(put_with(sequencer=sequencer))


@pytest.mark.parametrize(
    "size", ["1_024", " 1024", "-0", "1e3", "\uff11\uff10"]
)  # the last: fullwidth digits
def test_sizes_given_as_text_must_be_plain_digits(size):
    with pytest.raises(MalformedMessage, match=r"Records\[0\]\.size is not a number"):
        parse_message(put_with(size=size))


def test_a_size_given_as_text_is_accepted():
    (event,) = parse_message(put_with(size="1024")).events
    assert event.size == 1024


@pytest.mark.parametrize("shape", ["s3", "eventbridge"])
def test_keys_that_are_not_valid_unicode_are_malformed(shape):
    lone_surrogate = "bad\ud800key"
    if shape == "s3":
        body = put_with(key=lone_surrogate)
    else:
        document = load_event("eventbridge-object-created.json")
        document["detail"]["object"]["key"] = lone_surrogate
        body = json.dumps(document)
    with pytest.raises(MalformedMessage, match="object key is not valid UTF-8"):
        parse_message(body)


def test_an_event_time_outside_the_years_1_to_9999_in_utc_is_malformed():
    body = put_with(eventTime="0001-01-01T00:00:00+01:00")

    with pytest.raises(MalformedMessage, match="is not an ISO-8601 time"):
        parse_message(body)
