"""The fault-injecting proxy moved to `bench/proxy.py` (shared with the benchmarks' fleet
section, which does not import tests/); this name stays for tests written against it."""

from bench.proxy import (
    DROP,
    LOST_RESPONSE,
    SERVER_ERROR,
    SLOW,
    THROTTLE,
    Exchange,
    FaultProxy,
    Observer,
    Rule,
    classify_request,
    error_body,
)

__all__ = [
    "DROP",
    "LOST_RESPONSE",
    "SERVER_ERROR",
    "SLOW",
    "THROTTLE",
    "Exchange",
    "FaultProxy",
    "Observer",
    "Rule",
    "classify_request",
    "error_body",
]
