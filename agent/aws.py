"""boto3 clients built in one place, and AWS errors sorted into what the agent can do.

boto3 and botocore's session and client machinery are imported where a client is made, not
with this module: a command that needs no AWS (``backup-restore restore --offline``) does not
pay their ~0.2 s of imports (issue 19). Only `botocore.exceptions` (a few ms) is imported
here, for sorting errors.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING

import botocore.exceptions

from agent.config import Config
from agent.errors import BackupAgentError, ObjectGone, PermanentError, RetryableError

if TYPE_CHECKING:  # boto3-stubs: a development dependency, types only
    import boto3.session
    import botocore.config
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
    from botocore.client import BaseClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ses import SESClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sts import STSClient


@functools.cache
def dynamodb_serializer() -> TypeSerializer:
    """boto3's Python -> DynamoDB wire format converter, made on first use (importing it
    imports boto3 whole)."""
    from boto3.dynamodb.types import TypeSerializer

    return TypeSerializer()


@functools.cache
def dynamodb_deserializer() -> TypeDeserializer:
    """boto3's DynamoDB wire format -> Python converter, made on first use."""
    from boto3.dynamodb.types import TypeDeserializer

    return TypeDeserializer()


@functools.cache
def dynamodb_number() -> Callable[[object], Decimal]:
    """boto3's reading of a DynamoDB number (`TypeDeserializer`'s for "N"): a Decimal in
    DynamoDB's context (38 digits, exponents -128..126), which refuses what it would round."""
    from boto3.dynamodb.types import DYNAMODB_CONTEXT

    return DYNAMODB_CONTEXT.create_decimal  # type: ignore[return-value]


def sigv4() -> botocore.config.Config:
    """Settings for presigned URLs: botocore still signs them with SigV2 unless told, which
    S3 buckets made since 2020 refuse; SigV4 is also what caps a URL's life (X-Amz-Expires,
    7 days at most)."""
    import botocore.config

    return botocore.config.Config(signature_version="s3v4")


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
    """Every AWS client the agent uses, typed; tests build it from moto.

    `s3`, `sqs` and `dynamodb` are made once (the hot path uses them); the others are made
    on demand from the same session, settings and endpoint.
    """

    s3: S3Client
    sqs: SQSClient
    dynamodb: DynamoDBClient
    session: boto3.session.Session | None = None
    settings: botocore.config.Config | None = None
    endpoint_url: str | None = None

    def cloudwatch(self) -> CloudWatchClient:
        return self._session().client(
            "cloudwatch", config=self.settings, endpoint_url=self.endpoint_url
        )

    def sns(self) -> SNSClient:
        return self._session().client("sns", config=self.settings, endpoint_url=self.endpoint_url)

    def ses(self) -> SESClient:
        return self._session().client("ses", config=self.settings, endpoint_url=self.endpoint_url)

    def logs(self) -> CloudWatchLogsClient:
        """CloudWatch Logs: where the audit trail is shipped (audit.log_group)."""
        return self._session().client("logs", config=self.settings, endpoint_url=self.endpoint_url)

    def sts(self) -> STSClient:
        return self._session().client("sts", config=self.settings, endpoint_url=self.endpoint_url)

    def ec2(self, region: str | None = None) -> EC2Client:
        """EC2 in the configured region, or in `region` (snapshot copies)."""
        return self._session().client(
            "ec2", region_name=region, config=self.settings, endpoint_url=self.endpoint_url
        )

    def s3_presigner(self) -> S3Client:
        """S3 that signs with SigV4: for presigned URLs (`share`), never botocore's SigV2."""
        settings = self.settings.merge(sigv4()) if self.settings else sigv4()
        return self._session().client("s3", config=settings, endpoint_url=self.endpoint_url)

    def credentials_expiry(self) -> datetime | None:
        """When the session's credentials stop working, or None for long-term keys.

        Instance-role, SSO and assumed-role credentials expire (after hours); whatever
        they sign (a presigned URL) dies with them. They are refreshed first when due, so
        the expiry is the one the next signature will carry.
        """
        import botocore.credentials

        credentials = self._session().get_credentials()
        if not isinstance(credentials, botocore.credentials.RefreshableCredentials):
            return None
        try:
            credentials.get_frozen_credentials()  # refreshes them when they are due
        except Exception as exc:  # noqa: BLE001 - any provider's failure, said plainly
            raise BackupAgentError(f"the AWS credentials could not be refreshed: {exc}") from None
        expiry = getattr(credentials, "_expiry_time", None)  # botocore has no public getter
        return expiry.astimezone(UTC) if isinstance(expiry, datetime) else None

    def client(self, service: str) -> BaseClient:
        """Any other service by name (tests: kms); the agent uses the typed ones above."""
        made: BaseClient = self._session().client(  # type: ignore[call-overload]
            service, config=self.settings, endpoint_url=self.endpoint_url
        )
        return made

    def _session(self) -> boto3.session.Session:
        if self.session is None:
            raise BackupAgentError("these AWS clients have no session to make more from")
        return self.session


# Queries of the key index in flight at once during a listing (agent/storage/key_index.py):
# the client's connection pool has room for them beside the pipeline's workers.
LISTING_THREADS = 8


def client_config(config: Config) -> botocore.config.Config:
    import botocore.config

    return botocore.config.Config(
        region_name=config.aws.region,
        retries={"mode": config.aws.retry_mode, "max_attempts": config.aws.max_attempts},
        max_pool_connections=max(10, config.consumer.workers * 2 + 4) + LISTING_THREADS,
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
    )


def known_regions() -> frozenset[str]:
    """The regions the installed botocore's endpoint data names, in every partition (aws,
    aws-cn, aws-us-gov, ...): what `check-config` holds `aws.region` against."""
    import botocore.session

    session = botocore.session.get_session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("sqs", partition_name=partition)
    )


def build_clients(config: Config) -> Clients:
    """Clients from the normal credential chain (instance profile on EC2).

    `aws.endpoint_url` wins; otherwise boto3 itself honours $AWS_ENDPOINT_URL.
    """
    import boto3.session

    return session_clients(
        boto3.session.Session(region_name=config.aws.region),
        settings=client_config(config),
        endpoint_url=config.aws.endpoint_url,
    )


def session_clients(
    session: boto3.session.Session,
    *,
    settings: botocore.config.Config | None = None,
    endpoint_url: str | None = None,
) -> Clients:
    """Clients made from `session` (the one way the agent and its tests make them)."""
    fast_parsers(session)
    return Clients(
        s3=session.client("s3", config=settings, endpoint_url=endpoint_url),
        sqs=session.client("sqs", config=settings, endpoint_url=endpoint_url),
        dynamodb=session.client("dynamodb", config=settings, endpoint_url=endpoint_url),
        session=session,
        settings=settings,
        endpoint_url=endpoint_url,
    )


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_HTTP_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) ([A-Z][a-z]{2}) ([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)


def http_date(value: object) -> datetime:
    """botocore's timestamp parser, with a fast path for the one form S3's headers use
    (RFC 7231's IMF-fixdate, "Tue, 01 Dec 2026 15:00:00 GMT": every GetObject's
    LastModified): the same datetime (tzinfo dateutil's tzutc, as botocore gives) without
    dateutil's general parser, ~0.25 ms of CPU a GetObject here (issue 19,
    docs/benchmarks.md). Anything else goes to botocore's own parser."""
    from botocore.utils import parse_timestamp

    if isinstance(value, str):
        found = _HTTP_DATE.fullmatch(value)
        if found is not None and found.group(2) in _MONTHS:
            day, month, year, hour, minute, second = found.groups()
            with contextlib.suppress(ValueError):  # 31 Feb and the like: botocore decides
                return datetime(
                    int(year),
                    _MONTHS[month],
                    int(day),
                    int(hour),
                    int(minute),
                    int(second),
                    tzinfo=_botocore_utc(),
                )
    return parse_timestamp(value)  # type: ignore[arg-type]  # it takes str, int and float


@functools.cache
def _botocore_utc() -> tzinfo:
    """The tzinfo botocore gives a UTC timestamp (dateutil's tzutc)."""
    from botocore.utils import parse_timestamp

    zone = parse_timestamp("Thu, 01 Jan 2026 00:00:00 GMT").tzinfo
    assert zone is not None
    return zone


def fast_parsers(session: boto3.session.Session) -> None:
    """Have the clients made from `session` from now on parse timestamps with `http_date`
    and DynamoDB's attribute values without walking their shapes
    (agent/dynamodb_wire.py). The session's response parser factory is replaced by one
    that makes `DynamoDBJSONParser` for the JSON protocol (the defaults set on the old one
    carried over); clients made before keep theirs."""
    from agent.dynamodb_wire import DynamoDBParserFactory

    botocore_session = session._session
    factory = botocore_session.get_component("response_parser_factory")
    if not isinstance(factory, DynamoDBParserFactory):
        replacement = DynamoDBParserFactory()
        replacement.set_parser_defaults(**getattr(factory, "_defaults", {}))
        botocore_session.register_component("response_parser_factory", replacement)
        factory = replacement
    factory.set_parser_defaults(timestamp_parser=http_date)


def region_clients(
    region: str,
    endpoint_url: str | None = None,
    settings: botocore.config.Config | None = None,
) -> Clients:
    """Clients for a command that has a region but no valid config (mount-snapshot,
    alerting about a rejected config file)."""
    import boto3.session

    return session_clients(
        boto3.session.Session(region_name=region), settings=settings, endpoint_url=endpoint_url
    )


def unavailable(exc: BaseException) -> str | None:
    """One line for "no credentials" or "AWS cannot be reached", else None.

    What a person can act on without a traceback: the environment, not the command, is wrong
    (agent/cli/common.py `guarded` prints it and exits ExitCode.AWS_UNAVAILABLE)."""
    credentials = (
        botocore.exceptions.NoCredentialsError,
        botocore.exceptions.PartialCredentialsError,
        botocore.exceptions.CredentialRetrievalError,
        botocore.exceptions.TokenRetrievalError,
        botocore.exceptions.SSOError,
    )
    if isinstance(exc, credentials):
        return (
            f"no usable AWS credentials ({exc}): attach the instance role, or set AWS_PROFILE"
            " or the AWS_* environment variables"
        )
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return f"no AWS region ({exc}): set aws.region in the config, or --region"
    network = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
    if isinstance(exc, network):
        return f"cannot reach AWS: {exc} (network, proxy, VPC endpoint or aws.endpoint_url?)"
    return None


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code:
            return code
        return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return type(exc).__name__


# The receipt handle no longer names an in-flight message (it expired, or the message was
# received again): nothing more can be done with it. SQS's JSON protocol names the expired case
# AWS.SimpleQueueService.MessageNotInflight (botocore takes the x-amzn-query-error code), the
# query protocol MessageNotInflight or InvalidParameterValue ("The receipt handle has expired").
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html
LOST_HANDLE_CODES = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}
SQS_CODE_PREFIX = "AWS.SimpleQueueService."


def lost_handle(code: str) -> bool:
    """Does this SQS error code say the receipt handle is no longer valid?"""
    return code.removeprefix(SQS_CODE_PREFIX) in LOST_HANDLE_CODES


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
