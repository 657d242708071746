"""bench/find.py's in-memory key index: `find` online reads it as it reads DynamoDB's (the
ledger's own Queries, one page at a time), every key once, in key order."""

from __future__ import annotations

from bench import find


def test_the_in_memory_index_answers_the_ledgers_queries_page_by_page(monkeypatch) -> None:
    monkeypatch.setattr(find, "PAGE_BYTES", 2_000)  # several pages a partition
    pages = find.IndexPages(300)
    asked: list[bool] = []
    real = pages.query

    def counted(**request):
        asked.append("ExclusiveStartKey" in request)
        return real(**request)

    monkeypatch.setattr(pages, "query", counted)
    source = find.LedgerSource(find.Ledger(pages, "bench-find"))  # type: ignore[arg-type]
    keys = [record.key for record in source.latest(find.BUCKET)]
    expected = sorted(item["gsi_key"]["S"] for p in pages.partitions.values() for item, _ in p)
    assert keys == expected and len(keys) == 300
    assert any(asked)  # later pages asked for from a LastEvaluatedKey


def test_a_prefix_reads_only_its_keys() -> None:
    source = find.pages_source(200)
    every = [record.key for record in source.latest(find.BUCKET)]
    prefix = every[50][: len(every[50]) - 1]
    assert [r.key for r in source.latest(find.BUCKET, prefix)] == [
        k for k in every if k.startswith(prefix)
    ]
