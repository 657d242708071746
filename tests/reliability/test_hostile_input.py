"""Hostile input: keys built to escape the backup root or confuse comparisons, event fields
of the wrong type, and broken configuration files. Each is stored safely under its exact key
or rejected with a clear reason; nothing is written outside the backup root.
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.cli.agent import main as cli_main
from agent.errors import MalformedMessage
from agent.events import parse_message
from tests.reliability.pipeline import notification, s3_record, wait_until
from tests.support.aws import BUCKET

NFC = unicodedata.normalize("NFC", "café/résumé.txt")
NFD = unicodedata.normalize("NFD", "café/résumé.txt")
HOSTILE_KEYS = [
    "../../../../etc/passwd",
    "..",
    "./.",
    "a/../../b",
    "/etc/shadow",
    "//double//slash",
    "..\\..\\windows\\system32",
    "%2e%2e%2fencoded",
    "control\x01\x02\x1b[31mred\x7f",
    "tab\tnew\nline\rcr",
    "\u202eevil.exe",
    "emoji 🎉 + plus",
    "é" * 512,  # exactly 1024 bytes of UTF-8
    "k" * 1020 + ".bin",  # exactly 1024 bytes
    NFC,
    NFD,
]


def _files_outside(root: Path, workdir: Path) -> list[str]:
    allowed_top = {"objects", "tmp", "journal", ".backup-agent-volume"}
    stray = []
    for dirpath, _dirs, files in os.walk(workdir):
        for name in files:
            path = Path(dirpath) / name
            if root in path.parents:
                relative = path.relative_to(root)
                if relative.parts[0] in allowed_top:
                    continue
            stray.append(str(path))
    return stray


def test_hostile_keys_are_stored_under_their_exact_names_and_nothing_escapes(pipeline, tmp_path):
    assert NFC != NFD
    bodies = {key: f"body of {key!r}".encode() for key in HOSTILE_KEYS}
    for key, body in bodies.items():
        pipeline.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    pipeline.run_until(
        lambda: pipeline.drained() and all(pipeline.ledger.latest(BUCKET, k) for k in bodies)
    )

    import hashlib

    for key, body in bodies.items():
        versions = pipeline.ledger.versions(BUCKET, key)
        assert [v.sha256 for v in versions] == [hashlib.sha256(body).hexdigest()], repr(key)
        pipeline.volume.verify_copy(versions[0].sha256, len(body))
    assert {r.key for r in pipeline.ledger.keys(BUCKET)} == set(HOSTILE_KEYS)
    assert {r.key for r in pipeline.journal()} == set(HOSTILE_KEYS)  # journal round-trips
    names = [p.name for p in pipeline.volume.objects_dir.rglob("*") if p.is_file()]
    assert all(len(n) == 68 and n.endswith(".zst") for n in names)
    assert _files_outside(pipeline.volume.root, tmp_path) == []


BAD_RECORD_FIELDS = [
    ("size", "big"),
    ("size", -1),
    ("size", True),
    ("size", 1.5),
    ("size", [1]),
    ("key", 42),
    ("key", None),
    ("key", ""),
    ("key", "%FF%FE"),  # not UTF-8 once decoded
    ("key", "k" * 1025),  # longer than S3 allows
    ("key", "nul\x00byte"),
    ("key", "lone \ud800 surrogate"),  # not a key S3 could hold
    ("eTag", 7),
    ("versionId", {"id": 1}),
    ("sequencer", "zz"),
    ("sequencer", 12),
    ("sequencer", "-1"),
    ("sequencer", " 1"),
    ("sequencer", "1_0"),
    ("sequencer", "0x1F"),
    ("sequencer", "F" * 65),
]
BAD_RECORD_TOP = [
    ("eventTime", 12),
    ("eventTime", "yesterday"),
    ("eventTime", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
    ("eventTime", "9999-12-31T23:59:59-01:00"),  # after year 9999 in UTC
    ("eventName", ["ObjectCreated:Put"]),
    ("eventName", None),  # an unknown *name* is ignored on purpose, not malformed
    ("s3", "not an object"),
]


def _record_with(field: str, value, *, top: bool) -> dict:
    record = s3_record(BUCKET, "fine.txt", size=3, sequencer="00AB")
    if top:
        record[field] = value
    else:
        record["s3"]["object"][field] = value
    return record


@pytest.mark.parametrize(("field", "value"), BAD_RECORD_FIELDS)
def test_object_fields_of_the_wrong_kind_are_malformed(field, value):
    with pytest.raises(MalformedMessage):
        parse_message(json.dumps(notification(_record_with(field, value, top=False))))


@pytest.mark.parametrize(("field", "value"), BAD_RECORD_TOP)
def test_record_fields_of_the_wrong_kind_are_malformed(field, value):
    with pytest.raises(MalformedMessage):
        parse_message(json.dumps(notification(_record_with(field, value, top=True))))


NESTED = "[" * 100_000 + "]" * 100_000  # 200 KB: fits in one SQS message


@pytest.mark.parametrize(
    "body",
    [NESTED, json.dumps({"Type": "Notification", "Message": NESTED}), "1e999999", "NaN", "\ud800"],
    ids=["nested", "nested-in-sns", "huge-number", "nan", "lone-surrogate"],
)
def test_bodies_built_to_break_the_json_parser_are_malformed(body):
    with pytest.raises(MalformedMessage):
        parse_message(body)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(
        [
            (),
            ("Records",),
            ("Records", 0),
            ("Records", 0, "s3"),
            ("Records", 0, "s3", "object"),
            ("Records", 0, "s3", "object", "key"),
            ("Records", 0, "s3", "object", "size"),
            ("Records", 0, "s3", "object", "sequencer"),
            ("Records", 0, "s3", "bucket"),
            ("Records", 0, "eventTime"),
            ("Records", 0, "eventName"),
        ]
    ),
    value=_json,
)
def test_any_mangled_event_parses_or_is_malformed_never_crashes(path, value):
    document: object = notification(s3_record(BUCKET, "fine.txt", size=3, sequencer="00AB"))
    if path:
        parent = document
        for part in path[:-1]:
            parent = parent[part]  # type: ignore[index]
        parent[path[-1]] = value  # type: ignore[index]
    else:
        document = value
    try:
        parsed = parse_message(json.dumps(document))
    except MalformedMessage:
        return
    for event in parsed.events:
        assert isinstance(event.key, str) and event.key
        event.key.encode("utf-8")  # a key S3 could hold
        assert event.size is None or (isinstance(event.size, int) and event.size >= 0)
        assert event.order_key and event.version_token


def test_wrongly_typed_events_go_to_the_dead_letter_queue_and_good_ones_flow(make_pipeline):
    pipeline = make_pipeline(queue={"max_receive_count": 3})
    bad = [notification(_record_with(f, v, top=False)) for f, v in BAD_RECORD_FIELDS[:6]]
    bad += [notification(_record_with(f, v, top=True)) for f, v in BAD_RECORD_TOP]
    for body in bad:
        pipeline.send(body)
    pipeline.clients.s3.put_object(Bucket=BUCKET, Key="still/flowing.txt", Body=b"ok")

    with capture_logs() as logs:
        pipeline.run_until(lambda: pipeline.depth(pipeline.dlq_url)[0] == len(bad), timeout=30)
        wait_until(pipeline.drained)

    assert pipeline.ledger.latest(BUCKET, "still/flowing.txt") is not None
    assert "message.handler_crashed" not in [e["event"] for e in logs]


def test_an_event_for_a_bucket_not_configured_is_refused_and_left_for_the_redrive(pipeline):
    pipeline.send(notification(s3_record("someone-elses-bucket", "x.txt", size=1)))

    with capture_logs() as logs:
        pipeline.run_until(lambda: any(e["event"] == "backup.failed" for e in logs))
        wait_until(lambda: pipeline.consumer.is_idle())

    failed = [e for e in logs if e["event"] == "backup.failed"]
    assert failed[0]["retryable"] is False and "not in the configured buckets" in failed[0]["error"]
    assert pipeline.depth() == (0, 1)  # invisible until SQS redrives it, never deleted
    assert pipeline.ledger.latest("someone-elses-bucket", "x.txt") is None


# -- configuration files ----------------------------------------------------------------------


def _check_config(path: Path, capsys) -> tuple[int, str]:
    code = cli_main(["check-config", "--config", str(path)])
    return code, capsys.readouterr().err


VALID = {
    "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/q"},
    "buckets": ["company-documents"],
    "storage": {"root": "/mnt/backups"},
    "state": {"table": "backup-agent-objects"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            {**VALID, "consumer": {"workers": "many"}},
            "consumer.workers: input should be a valid integer",
        ),
        ({**VALID, "buckets": "company-documents"}, "buckets: input should be a valid list"),
        ({**VALID, "storage": {"root": "relative/dir"}}, "storage.root: relative/dir is not an"),
        ({**VALID, "queue": {"urll": "https://x"}}, "queue.urll: unknown key"),
        ({**VALID, "surprise": {"a": 1}}, "surprise: unknown key"),
        ({**VALID, "state": None}, "state: input should be a valid dictionary"),
        ({**VALID, "queue": {"url": "file:///etc/passwd"}}, "is not a queue URL"),
        ({**VALID, "buckets": ["../../etc"]}, "is not a bucket name"),
        ("- just\n- a list\n", "(top level): expected a mapping of sections, got list"),
        ("queue: [unclosed\n", "not valid YAML at line"),
        ("", "queue: field required"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    ],
    ids=lambda v: None if isinstance(v, str | bytes | dict) else str(v),
)
def test_a_broken_config_file_is_refused_with_each_problem_named(tmp_path, capsys, text, expected):
    path = tmp_path / "config.yaml"
    if isinstance(text, dict):
        import yaml

        path.write_text(yaml.safe_dump(text), encoding="utf-8")
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")

    code, err = _check_config(path, capsys)

    assert code == 2
    assert expected in err, err


def test_a_config_path_that_is_a_directory_is_refused(tmp_path, capsys):
    code, err = _check_config(tmp_path, capsys)
    assert code == 2
    assert "cannot read" in err and "directory" in err.lower()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file regardless")
def test_an_unreadable_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("queue: {}\n", encoding="utf-8")
    path.chmod(0)
    code, err = _check_config(path, capsys)
    assert code == 2
    assert "cannot read (Permission denied)" in err


def test_the_agent_refuses_to_run_on_a_broken_config_and_touches_nothing(tmp_path, capsys):
    root = tmp_path / "backups"
    root.mkdir()
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({**VALID, "storage": {"root": str(root), "chunk_bytes": "1MiB"}}),
        encoding="utf-8",
    )
    assert cli_main(["run", "--config", str(path)]) == 2
    assert "storage.chunk_bytes" in capsys.readouterr().err
    assert list(root.iterdir()) == []
