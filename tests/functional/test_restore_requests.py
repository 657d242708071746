"""What a restore of the current versions asks DynamoDB (issue 19, restore of small files).

`restore --all` / `--prefix` of the latest versions reads the LATEST items of the key
index (one Query per partition page: agent/storage/key_index.py), which carry each key's
current record: no request per key, however many keys. Counted on the client (moto).
"""

from __future__ import annotations

import pytest

from agent.restore.plan import RestoreScope, held_here, place, plan
from agent.restore.restorer import Restorer
from agent.restore.source import LedgerSource, Selector
from agent.restore.targets import DirectoryTarget, Status
from agent.storage import key_index
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.aws_hooks import record_calls
from tests.support.backed_up import BackedUp


@pytest.mark.parametrize("count", [5, 60])
def test_restoring_current_versions_costs_one_query_per_index_partition(
    aws, volume, tmp_path, count
):
    backups = BackedUp(aws, volume)
    for index in range(count):
        backups.put(f"data/{index:03d}.txt", f"file {index}\n".encode())
    backups.put("elsewhere/not-asked.txt", b"outside the prefix\n")
    calls = record_calls(aws.dynamodb)

    source = LedgerSource(Ledger(aws.dynamodb, TABLE))
    chosen = plan(source, BUCKET, RestoreScope(prefix="data/"), Selector())
    chosen = place(held_here(chosen, volume.read_marker().volume_id, volume.has_copy))
    summary = Restorer(DirectoryTarget(volume, tmp_path / "out"), workers=4).run(chosen)

    assert summary.count(Status.RESTORED) == count and summary.ok
    # one Query per partition (16 shards and the unsharded one), whatever the number of keys
    assert calls.operations() == ["Query"] * len(key_index.partitions(BUCKET))
    assert all(params.get("IndexName") == "by-key" for params in calls.of("Query"))
