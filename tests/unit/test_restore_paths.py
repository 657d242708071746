"""Keys → safe relative paths: nothing escapes, nothing collides, changes are reported."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.restore.durable import is_temp_name, temp_name
from agent.restore.paths import NAME_MAX, escape_part, key_parts, place_keys

# Keys made of the awkward pieces: separators, dots, long runs, unicode, percent signs, and a
# restore's temp name (which a later restore removes: never a restored file's name).
TEMP = temp_name("0123456789ab", 7)
PIECES = st.sampled_from(
    ["/", ".", "..", "a", "b", "%", "%2E", "é", "✓", " ", "k" * 300, "~", TEMP, "\ud800", "\udc80"]
)
KEYS = st.lists(PIECES, min_size=1, max_size=12).map("".join)


def _safe(parts: tuple[str, ...]) -> bool:
    return all(
        part not in ("", ".", "..")
        and not is_temp_name(part)
        and "/" not in part
        and len(os.fsencode(part)) <= NAME_MAX
        and len(part.encode("utf-8")) <= NAME_MAX  # a name in UTF-8, whatever the locale
        for part in parts
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(KEYS, min_size=1, max_size=20))
def test_every_placement_is_safe_and_distinct_and_never_under_a_file(keys):
    placements = place_keys(keys)

    paths = [p.parts for p in placements.values()]
    assert set(placements) == set(keys)
    assert all(_safe(parts) for parts in paths)
    assert len(set(paths)) == len(paths)
    directories = {parts[:i] for parts in paths for i in range(1, len(parts))}
    assert not directories & set(paths)  # no file sits where a directory is needed


@given(KEYS)
def test_a_key_that_needs_no_escaping_keeps_its_path(key):
    parts, escaped = key_parts(key)
    assert escaped == ("/".join(parts) != key)


def test_escapes_are_readable():
    assert key_parts("../../x") == (("%2E%2E", "%2E%2E", "x"), True)
    assert key_parts("/abs") == (("%", "abs"), True)
    assert key_parts("a//b") == (("a", "%", "b"), True)
    assert key_parts("dir/") == (("dir", "%"), True)
    assert key_parts("plain/file.txt") == (("plain", "file.txt"), False)


def test_long_parts_are_cut_with_a_digest():
    long = "é" * 300  # 600 bytes
    escaped = escape_part(long)
    assert len(escaped.encode()) <= NAME_MAX
    assert escaped.startswith("é" * 100) and escaped[100] == "~"
    assert escape_part(long) != escape_part(long + "x")


@pytest.mark.parametrize(
    "part",
    [
        temp_name("0123456789ab", 0),
        temp_name("0123456789ab", (1 << 40) + 12),  # a worker process's
        ".restore-0123456789abcdef0123456789abcdef.part",  # the form before batches
    ],
)
def test_a_part_of_the_temp_names_form_has_its_dot_escaped(part):
    assert key_parts(f"d/{part}") == (("d", "%2E" + part[1:]), True)


@pytest.mark.parametrize("part", [".restore-notes.part", ".restore-0123456789ab-01.part"])
def test_a_part_only_like_a_temp_name_is_kept(part):
    assert key_parts(f"d/{part}") == (("d", part), False)


def test_a_temp_name_too_long_once_escaped_is_cut_with_a_digest():
    part = temp_name("0123456789ab", int("1" * (NAME_MAX - len(temp_name("0123456789ab", 0)) + 1)))
    assert len(part) == NAME_MAX

    escaped = escape_part(part)

    assert len(escaped.encode()) <= NAME_MAX and not is_temp_name(escaped)
    assert escaped.startswith("%2Erestore-0123456789ab-111") and escaped[-17] == "~"


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("docs/lone \ud800 surrogate", ("docs", "lone %ED%A0%80 surrogate")),
        ("\udfff/x", ("%ED%BF%BF", "x")),
        ("a\udc80b", ("a%ED%B2%80b",)),  # os.fsencode would write a lone byte 0x80
    ],
)
def test_a_lone_surrogate_becomes_the_percent_escape_of_its_bytes(key, parts):
    assert key_parts(key) == (parts, True)


def test_a_long_part_with_a_surrogate_is_cut_after_its_escape():
    part = "\ud800" * 100  # 900 bytes once escaped

    escaped = escape_part(part)

    assert len(escaped.encode()) <= NAME_MAX and escaped.startswith("%ED%A0%80" * 22)
    assert escaped != escape_part("\ud801" * 100)


def test_file_and_directory_collision_keeps_both():
    placements = place_keys(["a", "a/b"])

    assert placements["a/b"].parts == ("a", "b") and not placements["a/b"].renamed
    assert placements["a"].collided and placements["a"].parts[0].startswith("a~")


def test_keys_escaping_to_the_same_name_are_both_kept():
    placements = place_keys(["%2E", "."])

    assert {p.relative for p in placements.values()} == {"%2E", placements["."].relative}
    assert placements["."].collided and placements["."].escaped
