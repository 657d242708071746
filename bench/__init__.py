"""Benchmarks of the backup agent against a local AWS endpoint (`make bench`).

Every figure is measured in the same run next to its reference: the large object next
to a plain GET and `zstd -3`, small objects next to a loop that makes only the calls one
object needs, restores next to `zstd -d`. See docs/benchmarks.md.
"""
