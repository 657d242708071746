"""SQS message bodies → ObjectEvent: every documented shape, the malformed ones, and keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import quote_plus

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.errors import MalformedMessage
from agent.events import EventKind, ObjectEvent, parse_message
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
    "restore event": (
        put_with(eventName="ObjectRestore:Completed"),
        "'ObjectRestore:Completed' is not an ObjectCreated/ObjectRemoved event",
    ),
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
    "eventbridge other detail-type": (
        json.dumps(
            {**load_event("eventbridge-object-created.json"), "detail-type": "Object Restore"}
        ),
        "EventBridge detail-type 'Object Restore' is not handled",
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
