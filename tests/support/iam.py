"""Record every AWS call the code makes, turn each into the IAM checks AWS would make, and
evaluate those checks against a generated policy.

`Recorder` patches `botocore.client.BaseClient._make_api_call`, so it sees the calls of
every client however it was built (`build_clients`, `Clients.client`, the copy-region EC2
client, mount-snapshot's own, alerts' standalone one). Calls are recorded only inside
`with recorder.role("agent"):`, so test set-up stays out of the record.

`checks()` is a small model of AWS authorisation for the operations the agent uses: the
IAM action (`iam.iam_action`), the resource ARNs and the condition keys (request tags,
resource tags looked up from moto before the call, a snapshot's `ec2:ParentVolume`,
`ec2:CreateAction`, the CloudWatch namespace, the SES sender). An operation it does not
know fails the test, so a new call added to the code cannot slip past the policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import botocore.client

from agent.operations.iam import iam_action, iam_actions, sqs_arn

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import SnapshotTypeDef, VolumeTypeDef

ACCOUNT = "123456789012"  # moto's account


@dataclass(frozen=True)
class Check:
    """One authorisation AWS makes for a call: action on resource, with these context keys."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()

    def keys(self) -> dict[str, str]:
        return dict(self.context)


@dataclass
class Call:
    role: str
    service: str  # the signing name: s3, sqs, dynamodb, monitoring, sns, ses, ec2
    region: str
    operation: str
    params: dict[str, Any]
    resource_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # ARN -> tags
    parent_volumes: dict[str, str] = field(default_factory=dict)  # snapshot ARN -> volume ARN
    attached_to: dict[str, str] = field(default_factory=dict)  # volume ARN -> instance id


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._role: str | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextlib.contextmanager
    def role(self, name: str) -> Iterator[None]:
        self._role = name
        try:
            yield
        finally:
            self._role = None

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Calls on this thread are not the product's (test set-up, waiting): leave them out."""
        self._local.quiet = True
        try:
            yield
        finally:
            self._local.quiet = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[Recorder]:
        # botocore-stubs do not declare the private _make_api_call (attr-defined here and below)
        original = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]
        recorder = self

        def make_api_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            if recorder._role is not None and not getattr(recorder._local, "quiet", False):
                recorder._record(client, operation, params)
            return original(client, operation, params)

        botocore.client.BaseClient._make_api_call = make_api_call  # type: ignore[attr-defined]
        try:
            yield self
        finally:
            botocore.client.BaseClient._make_api_call = original  # type: ignore[attr-defined]

    def add(self, role: str, service: str, region: str, operation: str, **params: Any) -> None:
        """A call made outside botocore (the recipient of a presigned URL)."""
        with self._lock:
            self.calls.append(Call(role, service, region, operation, params))

    def _record(self, client: Any, operation: str, params: dict[str, Any]) -> None:
        assert self._role is not None
        service = client.meta.service_model.signing_name
        region = client.meta.region_name
        call = Call(self._role, service, region, operation, dict(params))
        if service == "ec2":
            self._ec2_context(call)
        with self._lock:
            self.calls.append(call)

    def _ec2_context(self, call: Call) -> None:
        """What AWS reads from the existing resources a call names, read unrecorded: their
        tags (aws:ResourceTag), a snapshot's volume (ec2:ParentVolume), a volume's instance."""
        region, operation, params = call.region, call.operation, call.params
        with self.quiet():
            snapshot = params.get("SnapshotId") or params.get("SourceSnapshotId")
            if snapshot:
                where = params.get("SourceRegion", region)
                ec2 = boto3.client("ec2", region_name=where)
                snapshots = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"]
                arn = snapshot_arn(where, snapshot)
                call.resource_tags[arn] = _tags(snapshots[0]) if snapshots else {}
                if snapshots and snapshots[0].get("VolumeId"):
                    call.parent_volumes[arn] = volume_arn(where, snapshots[0]["VolumeId"])
            if operation in _VOLUME_OPERATIONS:
                ec2 = boto3.client("ec2", region_name=region)
                volumes = ec2.describe_volumes(VolumeIds=[params["VolumeId"]])["Volumes"]
                arn = volume_arn(region, params["VolumeId"])
                call.resource_tags[arn] = _tags(volumes[0]) if volumes else {}
                for attachment in volumes[0].get("Attachments", []) if volumes else []:
                    call.attached_to[arn] = attachment["InstanceId"]


def _tags(item: SnapshotTypeDef | VolumeTypeDef) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def snapshot_arn(region: str, snapshot_id: str) -> str:
    return f"arn:aws:ec2:{region}::snapshot/{snapshot_id}"


def volume_arn(region: str, volume_id: str) -> str:
    return f"arn:aws:ec2:{region}:{ACCOUNT}:volume/{volume_id}"


# -- the model of AWS authorisation -------------------------------------------------------

_S3_OBJECT_OPERATIONS = {
    "GetObject",
    "GetObjectTagging",
    "HeadObject",
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
}
_S3_BUCKET_OPERATIONS = {
    "ListObjects",
    "ListObjectsV2",
    "ListObjectVersions",
    "HeadBucket",
    "CreateBucket",
    "GetBucketVersioning",
    "GetBucketNotificationConfiguration",
    "PutBucketNotificationConfiguration",
    "PutBucketEncryption",
    "PutPublicAccessBlock",
    "GetBucketLifecycleConfiguration",
    "PutBucketLifecycleConfiguration",
}
_UNSCOPED = {  # actions with no resource-level permissions: checked against "*"
    ("monitoring", "ListMetrics"),
    ("ses", "GetIdentityVerificationAttributes"),
    ("ses", "VerifyEmailIdentity"),
    ("ec2", "DescribeVolumes"),
    ("ec2", "DescribeSnapshots"),
    ("ec2", "DescribeInstances"),
    ("ec2", "DescribeVolumesModifications"),
    ("sns", "GetSubscriptionAttributes"),
    ("sns", "SetSubscriptionAttributes"),
}


_TRANSACT = {  # a TransactWriteItems action -> the operation it is authorised as
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
_VOLUME_OPERATIONS = {"AttachVolume", "DetachVolume", "DeleteVolume"}  # on an existing volume


class UnknownOperation(AssertionError):
    pass


def checks(call: Call) -> list[Check]:
    """The authorisations AWS makes for `call` (raises UnknownOperation for an unmodelled one)."""
    action = iam_action(call.service, call.operation, call.params)
    p, region, op, service = call.params, call.region, call.operation, call.service
    if (service, op) in _UNSCOPED:
        return [Check(action, "*")]
    if service == "sqs":
        if "QueueUrl" in p:
            return [Check(action, sqs_arn(p["QueueUrl"], region, "aws"))]
        return [Check(action, f"arn:aws:sqs:{region}:{ACCOUNT}:{p['QueueName']}")]
    if service == "dynamodb" and op == "TransactWriteItems":
        # "Permissions for Put, Update, Delete, and Get actions are governed by the
        # permissions used for the underlying PutItem, UpdateItem, DeleteItem, and GetItem
        # operations" (transaction-apis-iam.html): each action as its own call
        return [
            check
            for entry in p["TransactItems"]
            for kind, body in entry.items()
            for check in checks(dataclasses.replace(call, operation=_TRANSACT[kind], params=body))
        ]
    if service == "dynamodb":
        table = f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{p['TableName']}"
        if op == "UpdateItem":  # dynamodb:Attributes: the key and every attribute named
            return [Check(action, table, (("dynamodb:Attributes", _attributes(p)),))]
        return [Check(action, f"{table}/index/{p['IndexName']}" if p.get("IndexName") else table)]
    if service == "s3":
        if op in _S3_OBJECT_OPERATIONS:  # a tagged upload needs s3:PutObjectTagging too
            arn = f"arn:aws:s3:::{p['Bucket']}/{p['Key']}"
            return [Check(a, arn) for a in iam_actions(service, op, p)]
        if op in _S3_BUCKET_OPERATIONS:
            return [Check(action, f"arn:aws:s3:::{p['Bucket']}")]
    if service == "monitoring":
        if op == "PutMetricData":
            return [Check(action, "*", (("cloudwatch:namespace", p["Namespace"]),))]
        if op in ("PutMetricAlarm", "DescribeAlarms"):
            names = [p["AlarmName"]] if op == "PutMetricAlarm" else p.get("AlarmNames", ["*"])
            return [
                Check(action, f"arn:aws:cloudwatch:{region}:{ACCOUNT}:alarm:{n}") for n in names
            ]
        if op in ("GetDashboard", "PutDashboard"):
            return [Check(action, f"arn:aws:cloudwatch::{ACCOUNT}:dashboard/{p['DashboardName']}")]
    if service == "sns":
        if op == "CreateTopic":
            return [Check(action, f"arn:aws:sns:{region}:{ACCOUNT}:{p['Name']}")]
        if "TopicArn" in p:
            return [Check(action, p["TopicArn"])]
    if service == "ses" and op in ("SendEmail", "SendRawEmail"):
        source = p["Source"].rpartition("<")[2].rstrip(">")
        identity = f"arn:aws:ses:{region}:{ACCOUNT}:identity/{source}"
        return [Check(action, identity, (("ses:FromAddress", source),))]
    if service == "ec2":
        return _ec2_checks(call, action)
    if service == "logs":
        group = f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{p['logGroupName']}"
        if op in ("CreateLogStream", "PutLogEvents"):
            return [Check(action, f"{group}:log-stream:{p['logStreamName']}")]
        if op in ("CreateLogGroup", "PutRetentionPolicy", "PutMetricFilter", "FilterLogEvents"):
            return [Check(action, group)]
    if service == "sts" and op == "GetCallerIdentity":
        return []  # needs no permission: AWS answers it for any caller (sts API reference)
    raise UnknownOperation(f"no authorisation model for {service}:{op} — add it to checks()")


def _attributes(params: dict[str, Any]) -> str:
    """The top-level attributes an UpdateItem names (its key, the first name of every path
    in its expressions), comma-separated: what IAM's multivalued dynamodb:Attributes holds."""
    names = set(params["Key"])
    aliases = params.get("ExpressionAttributeNames", {})
    for expression in (params.get("UpdateExpression", ""), params.get("ConditionExpression", "")):
        for word in re.findall(r"(?<![\w.:#])#?[A-Za-z_]\w*", expression):
            if word.startswith("#"):
                names.add(aliases[word])
            elif word not in _EXPRESSION_WORDS:
                names.add(word)
    return ",".join(sorted(names))


_EXPRESSION_WORDS = {"SET", "REMOVE", "ADD", "DELETE", "AND", "OR", "NOT", "attribute_exists",
                     "attribute_not_exists", "if_not_exists", "begins_with", "size"}  # fmt: skip


def _request_tags(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    tags = [t for spec in params.get("TagSpecifications", []) for t in spec["Tags"]]
    return tuple((f"aws:RequestTag/{t['Key']}", t["Value"]) for t in tags)


def _resource_tags(call: Call, arn: str) -> tuple[tuple[str, str], ...]:
    """The context keys of an existing resource: its tags, and a snapshot's parent volume."""
    keys = [(f"aws:ResourceTag/{k}", v) for k, v in call.resource_tags.get(arn, {}).items()]
    if arn in call.parent_volumes:
        keys.append(("ec2:ParentVolume", call.parent_volumes[arn]))
    return tuple(keys)


def _ec2_arn(region: str, resource_id: str) -> str:
    if resource_id.startswith("snap-"):
        return snapshot_arn(region, resource_id)
    if resource_id.startswith("vol-"):
        return volume_arn(region, resource_id)
    raise UnknownOperation(f"no ARN model for the EC2 resource {resource_id}")


def _ec2_checks(call: Call, action: str) -> list[Check]:
    p, region, op = call.params, call.region, call.operation
    request = _request_tags(p)
    new_snapshot = f"arn:aws:ec2:{region}::snapshot/*"
    tagging: list[Check] = []
    if p.get("TagSpecifications"):
        what = "volume/*" if op == "CreateVolume" else "snapshot/*"
        resource = (
            f"arn:aws:ec2:{region}:{ACCOUNT}:{what}" if op == "CreateVolume" else new_snapshot
        )
        tagging = [Check("ec2:CreateTags", resource, (("ec2:CreateAction", op), *request))]
    if op == "CreateSnapshot":
        parent = (("ec2:ParentVolume", volume_arn(region, p["VolumeId"])),)
        return [
            Check(action, volume_arn(region, p["VolumeId"]), request),
            Check(action, new_snapshot, request + parent),
            *tagging,
        ]
    if op == "CopySnapshot":
        source = snapshot_arn(p["SourceRegion"], p["SourceSnapshotId"])
        return [
            Check(action, source, _resource_tags(call, source) + request),
            Check(action, new_snapshot, request),
            *tagging,
        ]
    if op == "DeleteSnapshot":
        arn = snapshot_arn(region, p["SnapshotId"])
        return [Check(action, arn, _resource_tags(call, arn))]
    if op == "CreateVolume":
        source = snapshot_arn(region, p["SnapshotId"])
        return [
            Check(action, source, _resource_tags(call, source) + request),
            Check(action, f"arn:aws:ec2:{region}:{ACCOUNT}:volume/*", request),
            *tagging,
        ]
    if op == "ModifyVolume":  # storage.auto_grow: the volume alone
        volume = volume_arn(region, p["VolumeId"])
        return [Check(action, volume, _resource_tags(call, volume))]
    if op in _VOLUME_OPERATIONS:
        volume = volume_arn(region, p["VolumeId"])
        found = [Check(action, volume, _resource_tags(call, volume))]
        instance = p.get("InstanceId") or call.attached_to.get(volume)
        if op != "DeleteVolume" and instance:  # Attach and Detach: the instance too
            found.append(Check(action, f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{instance}"))
        return found
    if op == "CreateTags":  # tagging an existing resource: no ec2:CreateAction
        tags = tuple((f"aws:RequestTag/{t['Key']}", t["Value"]) for t in p["Tags"])
        arns = [_ec2_arn(region, resource) for resource in p["Resources"]]
        return [Check(action, arn, tags + _resource_tags(call, arn)) for arn in arns]
    raise UnknownOperation(f"no authorisation model for ec2:{op} — add it to checks()")


# -- evaluating a policy ------------------------------------------------------------------


def matching_statements(policy: dict[str, Any], check: Check) -> list[str]:
    """Sids of the Allow statements that grant `check` (IAM semantics, the subset we use)."""
    return [
        s["Sid"]
        for s in policy["Statement"]
        if s["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase(check.action, a) for a in s["Action"])
        and any(fnmatch.fnmatchcase(check.resource, r) for r in s["Resource"])
        and _conditions_hold(s.get("Condition", {}), check.keys())
    ]


def _conditions_hold(condition: dict[str, dict[str, Any]], keys: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            present = key in keys
            if operator == "ForAllValues:StringEquals":  # every value of the key is allowed
                if present and not set(keys[key].split(",")) <= set(values):
                    return False
                continue
            if operator == "Null":
                if values != [str(not present).lower()]:
                    return False
            elif operator in ("StringEquals", "StringLike", "ArnEquals", "ArnLike"):
                # the Arn operators match each ARN component with wildcards: fnmatch does
                match = str.__eq__ if operator == "StringEquals" else fnmatch.fnmatchcase
                if not present or not any(match(keys[key], v) for v in values):
                    return False
            else:
                raise AssertionError(f"condition operator {operator} is not modelled")
    return True
