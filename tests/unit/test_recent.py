"""RecentVersions: a bounded memory of versions recorded by this process."""

from __future__ import annotations

from agent.pipeline.recent import DEFAULT_CAPACITY, RecentVersions


def test_a_remembered_version_gives_its_content_hash():
    recent = RecentVersions()
    recent.remember("bucket", "a/b.txt", "v:1", "ab" * 32)

    assert recent.sha256_of("bucket", "a/b.txt", "v:1") == "ab" * 32
    assert recent.sha256_of("bucket", "a/b.txt", "v:2") is None
    assert recent.sha256_of("other", "a/b.txt", "v:1") is None


def test_fields_do_not_run_into_each_other():
    recent = RecentVersions()
    recent.remember("b", "k\0x", "v", "11" * 32)

    assert recent.sha256_of("b", "k", "x\0v") is None


def test_the_oldest_version_is_forgotten_beyond_capacity():
    recent = RecentVersions(capacity=3)
    for n in range(4):
        recent.remember("bucket", f"key-{n}", "v", f"{n:064x}")

    assert len(recent) == 3
    assert recent.sha256_of("bucket", "key-0", "v") is None
    assert recent.sha256_of("bucket", "key-3", "v") == f"{3:064x}"


def test_remembering_again_keeps_a_version_fresh():
    recent = RecentVersions(capacity=2)
    recent.remember("bucket", "old", "v", "00" * 32)
    recent.remember("bucket", "new", "v", "11" * 32)
    recent.remember("bucket", "old", "v", "00" * 32)
    recent.remember("bucket", "newest", "v", "22" * 32)

    assert recent.sha256_of("bucket", "old", "v") == "00" * 32
    assert recent.sha256_of("bucket", "new", "v") is None


def test_a_key_that_is_not_valid_utf8_is_remembered():
    recent = RecentVersions()
    recent.remember("bucket", "bad-\udcff", "v", "33" * 32)

    assert recent.sha256_of("bucket", "bad-\udcff", "v") == "33" * 32


def test_a_version_remembered_longer_ago_than_max_age_is_asked_of_the_ledger_again():
    now = [1000.0]
    recent = RecentVersions(max_age=60, clock=lambda: now[0])
    recent.remember("bucket", "key", "v", "44" * 32)

    now[0] += 59
    assert recent.sha256_of("bucket", "key", "v") == "44" * 32
    now[0] += 2
    assert recent.sha256_of("bucket", "key", "v") is None


def test_a_value_that_is_no_sha256_digest_is_not_remembered():
    recent = RecentVersions()
    recent.remember("bucket", "short", "v", "ab" * 31)  # 31 bytes: packed it would be padded
    recent.remember("bucket", "not-hex", "v", "zz" * 32)

    assert len(recent) == 0
    assert recent.sha256_of("bucket", "short", "v") is None


def test_a_capacity_of_zero_remembers_nothing():
    recent = RecentVersions(capacity=0)
    recent.remember("bucket", "key", "v", "55" * 32)

    assert len(recent) == 0 and recent.sha256_of("bucket", "key", "v") is None


def test_a_full_memory_of_the_default_capacity_stays_near_13_mib():
    """Each entry is a 16-byte digest and a 40-byte value: ~210 bytes with the ordered map's
    own (a tuple of the hex digest and a float was 330: 21 MiB at the default capacity)."""
    import tracemalloc

    recent = RecentVersions()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(recent.capacity):
            recent.remember("bucket", f"soak/{n % 40:02d}.dat", f"s:{n:016X}", f"{n:064x}")
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(recent) == recent.capacity
    assert used / recent.capacity < 240, used / recent.capacity
    assert used < 15 * 2**20


def test_the_capacity_is_the_config_s_and_a_change_needs_a_restart(tmp_path, volume):
    from agent.runtime.reload import needs_restart
    from agent.runtime.wiring import backup_service
    from tests.support.aws import make_config, mocked_aws

    config = make_config(tmp_path, consumer={"workers": 2, "recent_versions": 7})
    with mocked_aws() as clients:
        service = backup_service(config, clients, volume, "vol-test")

    assert service._recent.capacity == 7
    # the config's default (agent/config.py may not import the pipeline) is the memory's
    assert make_config(tmp_path).consumer.recent_versions == 65_536 == DEFAULT_CAPACITY
    assert needs_restart("consumer.recent_versions")
