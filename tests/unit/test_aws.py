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
