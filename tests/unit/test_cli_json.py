"""The `--json` documents keep the keys docs/operations.md lists: the table there is the
schema scripts rely on, so a field added to a report, or one renamed, fails here until the
table says so too."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from agent.lifecycle.gc import GcReport
from agent.lifecycle.reconcile import ReconcileReport
from agent.lifecycle.reindex import ReindexReport
from agent.lifecycle.retention import RetentionReport
from agent.lifecycle.scrub import ScrubReport
from agent.operations.bootstrap import Report as BootstrapReport
from agent.snapshots.records import SnapshotRun

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

# command (as the table names it), the report its JSON is built from, keys the CLI adds
REPORTS = [
    ("reconcile", ReconcileReport, set()),
    ("retention", RetentionReport, set()),
    ("gc", GcReport, set()),
    ("scrub", ScrubReport, set()),
    ("reindex", ReindexReport, {"table", "known"}),
    ("snapshot", SnapshotRun, set()),
    ("backup-bootstrap-aws", BootstrapReport, set()),
]


def documented_keys(command: str) -> set[str]:
    """The top-level keys of `command`'s row in the --json table."""
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([^`]+)` \| `\{(.*)\}`", line)
        if match and match.group(1) == command:
            body = re.sub(r"\[[^\]]*\]", "", match.group(2))  # what is inside lists
            return {key.split(":")[0].strip() for key in body.split(",") if key.strip()}
    raise AssertionError(f"{command}: no row in the --json table of docs/operations.md")


@pytest.mark.parametrize(("command", "report", "added"), REPORTS, ids=[r[0] for r in REPORTS])
def test_the_json_keys_are_the_documented_ones(command, report, added):
    fields = {field.name for field in dataclasses.fields(report)} | added
    assert fields == documented_keys(command)
