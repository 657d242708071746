"""Clients come from one place with the configured endpoint and retries; errors are sorted."""

from __future__ import annotations

import botocore.exceptions
import pytest

from agent.aws import build_clients, classify
from agent.errors import IntegrityError, ObjectGone, PermanentError, RetryableError
from tests.support.aws import make_config


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def test_the_configured_endpoint_is_used_by_every_client(backup_root):
    config = make_config(
        backup_root, aws={"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5999"}
    )
    clients = build_clients(config)
    for client in (clients.s3, clients.sqs, clients.dynamodb, clients.cloudwatch()):
        assert client.meta.endpoint_url == "http://127.0.0.1:5999"
        assert client.meta.region_name == "eu-west-1"


def test_aws_endpoint_url_from_the_environment_is_honoured(backup_root, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:6001")
    clients = build_clients(make_config(backup_root))
    assert clients.s3.meta.endpoint_url == "http://127.0.0.1:6001"
    assert clients.sqs.meta.endpoint_url == "http://127.0.0.1:6001"


def test_without_any_endpoint_the_real_regional_endpoints_are_used(backup_root):
    clients = build_clients(make_config(backup_root))
    assert clients.sqs.meta.endpoint_url == "https://sqs.us-east-1.amazonaws.com"


def test_retries_use_the_configured_botocore_mode(backup_root):
    config = make_config(backup_root, aws={"retry_mode": "standard", "max_attempts": 5})
    retries = build_clients(config).s3.meta.config.retries
    assert retries["mode"] == "standard"


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("SlowDown", 503, RetryableError),
        ("ThrottlingException", 400, RetryableError),
        ("ProvisionedThroughputExceededException", 400, RetryableError),
        ("InternalError", 500, RetryableError),
        ("SomethingNew", 502, RetryableError),  # any 5xx
        ("NoSuchKey", 404, ObjectGone),
        ("NoSuchVersion", 404, ObjectGone),
        ("PreconditionFailed", 412, ObjectGone),
        ("AccessDenied", 403, PermanentError),
        ("NoSuchBucket", 404, PermanentError),
    ],
)
def test_client_errors_are_classified(code, status, kind):
    error = classify(client_error(code, status), "S3 GetObject s3://b/k")
    assert type(error) is kind
    assert str(error).startswith(f"S3 GetObject s3://b/k: {code}: ")


def test_network_errors_are_retryable():
    error = botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3")
    assert isinstance(classify(error, "S3"), RetryableError)
    assert isinstance(classify(ConnectionResetError(), "S3"), RetryableError)


def test_the_agents_own_errors_pass_through():
    error = IntegrityError("bad bytes")
    assert classify(error, "x") is error


# -- timestamps: S3's header dates parsed without dateutil's general parser (issue 19) ------

from datetime import UTC, datetime, timedelta  # noqa: E402

import boto3.session  # noqa: E402
from botocore.utils import parse_timestamp  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agent.aws import fast_parsers, http_date  # noqa: E402


@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda moment: moment.replace(microsecond=0)
    )
)
def test_an_http_date_parses_exactly_as_botocore_parses_it(moment):
    text = moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
    ours, theirs = http_date(text), parse_timestamp(text)
    assert ours == theirs and ours.utcoffset() == timedelta(0)
    assert type(ours.tzinfo) is type(theirs.tzinfo)
    assert ours == moment.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-01T15:00:00.000Z",  # ISO 8601 (XML bodies)
        "2026-12-01T15:00:00+02:00",
        1764601200,  # epoch seconds (JSON protocols)
        "1764601200.5",
        "Tue, 01 Dec 2026 15:00:00 +0000",  # not GMT: not the fast path's form
        "Tuesday, 01-Dec-26 15:00:00 GMT",  # RFC 850
        "Tue, 1 Dec 2026 15:00:00 GMT",  # one-digit day
        "Sat, 29 Feb 2025 15:00:00 GMT",  # no such day: botocore decides
    ],
)
def test_every_other_timestamp_is_left_to_botocore(value):
    try:
        expected: object = parse_timestamp(value)
    except Exception as exc:  # botocore refuses it: so must we, the same way
        with pytest.raises(type(exc)):
            http_date(value)
        return
    assert http_date(value) == expected


def test_the_agents_clients_parse_timestamps_with_the_fast_path(monkeypatch):
    session = boto3.session.Session(region_name="us-east-1")
    fast_parsers(session)
    parser = session._session.get_component("response_parser_factory").create_parser("rest-xml")
    assert parser._timestamp_parser is http_date
