"""Keys → safe relative paths: nothing escapes, nothing collides, changes are reported."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.restore.paths import NAME_MAX, escape_part, key_parts, place_keys

# Keys made of the awkward pieces: separators, dots, long runs, unicode, percent signs.
PIECES = st.sampled_from(["/", ".", "..", "a", "b", "%", "%2E", "é", "✓", " ", "k" * 300, "~"])
KEYS = st.lists(PIECES, min_size=1, max_size=12).map("".join)


def _safe(parts: tuple[str, ...]) -> bool:
    return all(
        part not in ("", ".", "..")
        and "/" not in part
        and len(part.encode("utf-8", errors="surrogatepass")) <= NAME_MAX
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


def test_file_and_directory_collision_keeps_both():
    placements = place_keys(["a", "a/b"])

    assert placements["a/b"].parts == ("a", "b") and not placements["a/b"].renamed
    assert placements["a"].collided and placements["a"].parts[0].startswith("a~")


def test_keys_escaping_to_the_same_name_are_both_kept():
    placements = place_keys(["%2E", "."])

    assert {p.relative for p in placements.values()} == {"%2E", placements["."].relative}
    assert placements["."].collided and placements["."].escaped
