"""boto3 clients built in one place, and AWS errors sorted into what the agent can do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from agent.config import Config
from agent.errors import BackupAgentError, ObjectGone, PermanentError, RetryableError

GONE_CODES = {"NoSuchKey", "NoSuchVersion", "404", "NotFound", "PreconditionFailed", "412"}
RETRYABLE_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "SlowDown",
    "TooManyRequestsException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "TransactionInProgressException",
    "500",
    "502",
    "503",
    "504",
}


@dataclass(frozen=True)
class Clients:
    """Every AWS client the agent uses; tests build it from moto."""

    s3: Any
    sqs: Any
    dynamodb: Any
    session: Any = None

    def client(self, service: str) -> Any:
        """Another client from the same session and settings (cloudwatch, sns, ses, ec2)."""
        if self.session:
            return self.session.client(service)
        return boto3.client(service)  # type: ignore[call-overload]


def client_config(config: Config) -> botocore.config.Config:
    return botocore.config.Config(
        region_name=config.aws.region,
        retries={"mode": config.aws.retry_mode, "max_attempts": config.aws.max_attempts},
        max_pool_connections=max(10, config.consumer.workers * 2 + 4),
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
    )


def build_clients(config: Config) -> Clients:
    """Clients from the normal credential chain (instance profile on EC2).

    `aws.endpoint_url` wins; otherwise boto3 itself honours $AWS_ENDPOINT_URL.
    """
    session = _Session(config)
    return Clients(
        s3=session.client("s3"),
        sqs=session.client("sqs"),
        dynamodb=session.client("dynamodb"),
        session=session,
    )


class _Session:
    def __init__(self, config: Config) -> None:
        self._session = boto3.session.Session(region_name=config.aws.region)
        self._config = client_config(config)
        self._endpoint = config.aws.endpoint_url

    def client(self, service: str) -> Any:
        kwargs: dict[str, Any] = {"config": self._config}
        if self._endpoint:
            kwargs["endpoint_url"] = self._endpoint
        return self._session.client(service, **kwargs)  # type: ignore[call-overload]


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code:
            return code
        return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return type(exc).__name__


def classify(exc: BaseException, what: str) -> BackupAgentError:
    """Turn a botocore/network exception into the agent's error tree."""
    if isinstance(exc, BackupAgentError):
        return exc
    code = error_code(exc)
    message = f"{what}: {code}: {exc}"
    if isinstance(exc, botocore.exceptions.ClientError):
        if code in GONE_CODES:
            return ObjectGone(message)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in RETRYABLE_CODES or (isinstance(status, int) and status >= 500):
            return RetryableError(message)
        return PermanentError(message)
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return RetryableError(message)  # connection reset, timeouts, incomplete reads
    return RetryableError(message)
