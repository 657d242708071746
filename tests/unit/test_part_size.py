"""Multipart part sizes for restore --to-s3 and share: within S3's limits for any object size.

S3's multipart limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html):
part numbers 1 to 10,000; a part is 5 MiB to 5 GiB (the last one may be smaller); the largest
object is 48.8 TiB (10,000 parts of 5 GiB). A fixed 16 MiB part failed at part 10,001, for
anything over 156.25 GiB.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.errors import BackupAgentError
from agent.restore import targets
from agent.restore.targets import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    PART_SIZE,
    part_size_for,
)
from tests.support.backed_up import BackedUp

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
LARGEST = MAX_PARTS * MAX_PART_SIZE  # 48.8 TiB


def parts(size: int, part: int) -> int:
    return max(1, -(-size // part))


def test_the_limits_are_s3s():
    assert (10_000, 5 * MiB, 5 * GiB) == (MAX_PARTS, MIN_PART_SIZE, MAX_PART_SIZE)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, 16 * MiB),
        (5 * MiB, 16 * MiB),
        (156 * GiB, 16 * MiB),
        (10_000 * 16 * MiB, 16 * MiB),  # 156.25 GiB: exactly 10,000 parts of 16 MiB
        (10_000 * 16 * MiB + 1, 17 * MiB),  # one byte more: part 10,001 before
        (200 * GiB, 21 * MiB),
        (5 * TiB, 525 * MiB),
        (LARGEST, 5 * GiB),
    ],
)
def test_part_size_grows_with_the_object_only_when_it_must(size, expected):
    part = part_size_for(size)
    assert part == expected
    assert parts(size, part) <= MAX_PARTS
    assert MIN_PART_SIZE <= part <= MAX_PART_SIZE


def test_an_object_larger_than_10000_parts_of_5_gib_is_refused():
    with pytest.raises(BackupAgentError, match="10000 parts"):
        part_size_for(LARGEST + 1)


def test_a_preferred_size_below_5_mib_is_raised_to_the_minimum():
    assert part_size_for(12 * MiB, preferred=1 * MiB) == MIN_PART_SIZE


@given(
    size=st.integers(min_value=0, max_value=LARGEST),
    preferred=st.integers(min_value=1, max_value=6 * GiB),
)
@example(size=156 * GiB + 256 * MiB + 1, preferred=PART_SIZE)
@example(size=5 * TiB, preferred=PART_SIZE)
def test_any_size_fits_in_10000_parts_of_5_mib_to_5_gib(size, preferred):
    part = part_size_for(size, preferred)
    assert MIN_PART_SIZE <= part <= MAX_PART_SIZE
    assert parts(size, part) <= MAX_PARTS
    assert part % MiB == 0 or part == max(MIN_PART_SIZE, min(preferred, MAX_PART_SIZE))


def test_the_upload_uses_the_sized_parts(aws, volume, monkeypatch):
    """With the part limit lowered to 2, a 12 MiB object goes up in 2 parts of 6 MiB (a fixed
    5 MiB part would have needed 3): the upload follows part_size_for, not the fixed size."""
    monkeypatch.setattr(targets, "MAX_PARTS", 2)
    backups = BackedUp(aws, volume)
    body = os.urandom(12 * MiB)
    backups.put("twelve.bin", body)
    record = backups.service.ledger.latest(backups.bucket, "twelve.bin")
    sizes: list[int] = []
    aws.s3.meta.events.register(
        "provide-client-params.s3.UploadPart", lambda params, **_: sizes.append(len(params["Body"]))
    )

    targets.upload_verified(
        aws.s3,
        volume,
        record,
        backups.bucket,
        "copy.bin",
        multipart_threshold=MiB,
        part_size=5 * MiB,
    )

    assert sizes == [6 * MiB, 6 * MiB]
    assert aws.s3.get_object(Bucket=backups.bucket, Key="copy.bin")["Body"].read() == body
