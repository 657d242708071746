"""bench/endpoint_profile.py: which request type a WSGI request is counted under, and the
counts dumped per phase."""

from __future__ import annotations

import io
import json
from pathlib import Path

from bench.endpoint_profile import Counter, request_type


def test_json_protocols_are_named_by_their_target():
    environ = {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.TransactWriteItems"}
    assert request_type(environ) == "DynamoDB.TransactWriteItems"
    assert request_type({"HTTP_X_AMZ_TARGET": "AmazonSQS.ReceiveMessage"}) == (
        "AmazonSQS.ReceiveMessage"
    )


def test_a_query_protocol_request_is_named_by_its_action_and_its_body_is_put_back():
    body = b"Action=PutMetricData&Version=2010-08-01&Namespace=BackupAgent"
    environ = {
        "CONTENT_TYPE": "application/x-www-form-urlencoded; charset=utf-8",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    assert request_type(environ) == "query.PutMetricData"
    assert environ["wsgi.input"].read() == body  # moto still reads the whole request


def test_s3_requests_are_told_apart_by_the_sub_resources_that_change_moto_s_work():
    def s3(method: str, path: str, query: str = "") -> str:
        return request_type({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query})

    assert s3("GET", "/bench-small/small/00001.json") == "s3.GET object"
    assert s3("GET", "/bench-small/k", "versionId=abc") == "s3.GET object?versionId"
    assert s3("GET", "/bench-small/k", "tagging") == "s3.GET object?tagging"
    assert s3("HEAD", "/bench-small") == "s3.HEAD bucket"


def test_each_dump_is_one_json_line_of_the_counts_since_the_last(tmp_path: Path):
    out = tmp_path / "counts.jsonl"
    counter = Counter(str(out), None)
    counter.add("AmazonSQS.ReceiveMessage", 0.05, None)
    counter.add("AmazonSQS.ReceiveMessage", 0.07, None)
    counter.add("s3.GET object", 0.003, None)
    counter.dump()
    counter.add("DynamoDB.PutItem", 0.004, None)
    counter.dump()

    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["types"] == {
        "AmazonSQS.ReceiveMessage": {"count": 2, "cpu_s": 0.12},
        "s3.GET object": {"count": 1, "cpu_s": 0.003},
    }
    assert list(first["types"]) == ["AmazonSQS.ReceiveMessage", "s3.GET object"]  # costliest first
    assert second["types"] == {"DynamoDB.PutItem": {"count": 1, "cpu_s": 0.004}}
    assert second["dump"] == 1
