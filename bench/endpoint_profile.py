"""moto_server with the CPU of each request type counted (issue 19: what the endpoint spends).

`python -m bench.endpoint_profile -H 127.0.0.1 -p PORT --out FILE` runs the benchmark's
moto_server (tests/support/moto_server.py's changes installed) and times every request on
its own thread's CPU clock (`time.thread_time`), by request type: the JSON protocols'
`X-Amz-Target` (DynamoDB, SQS), the query protocol's `Action` (CloudWatch), or the S3
method with the sub-resources that change what moto does (`versionId`, `tagging`, ...).
SIGUSR1 appends the counts since the last SIGUSR1 to FILE as one JSON line and starts
again, so one endpoint serves an agent run and a loop run and reports them apart.
`BENCH_ENDPOINT_CPROFILE=FILE` also profiles each request with cProfile and writes the
merged stats to FILE.<n> on each SIGUSR1 (slower: for where the time goes, not how much).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from tests.support import moto_server

S3_SUBRESOURCES = ("versionId", "tagging", "uploads", "uploadId", "partNumber", "list-type")


def request_type(environ: dict[str, Any]) -> str:
    """`service.Operation` of one WSGI request (reading a form body puts it back)."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        service, _, operation = str(target).partition(".")
        return f"{service.split('_')[0]}.{operation}"
    content_type = str(environ.get("CONTENT_TYPE", ""))
    if content_type.startswith("application/x-www-form-urlencoded"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
        return f"query.{action}"
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    marks = [name for name in S3_SUBRESOURCES if name in query]
    path = str(environ.get("PATH_INFO", ""))
    shape = "bucket" if path.strip("/").count("/") == 0 else "object"
    return f"s3.{environ.get('REQUEST_METHOD')} {shape}" + "".join(f"?{m}" for m in marks)


class Counter:
    """CPU seconds and counts per request type, and optionally merged cProfile stats."""

    def __init__(self, out: str, cprofile: str | None) -> None:
        self.out = out
        self.cprofile = cprofile
        self.lock = threading.Lock()
        self.cpu: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.stats: pstats.Stats | None = None
        self.dumps = 0
        self.started = time.monotonic()

    def add(self, kind: str, seconds: float, profile: cProfile.Profile | None) -> None:
        with self.lock:
            self.cpu[kind] = self.cpu.get(kind, 0.0) + seconds
            self.count[kind] = self.count.get(kind, 0) + 1
            if profile is not None:
                if self.stats is None:
                    self.stats = pstats.Stats(profile)
                else:
                    self.stats.add(profile)

    def dump(self) -> None:
        with self.lock:
            line = {
                "dump": self.dumps,
                "seconds": round(time.monotonic() - self.started, 3),
                "types": {
                    kind: {"count": self.count[kind], "cpu_s": round(self.cpu[kind], 4)}
                    for kind in sorted(self.cpu, key=lambda k: -self.cpu[k])
                },
            }
            with open(self.out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
            if self.cprofile and self.stats is not None:
                self.stats.dump_stats(f"{self.cprofile}.{self.dumps}")
            self.cpu, self.count, self.stats = {}, {}, None
            self.dumps += 1
            self.started = time.monotonic()


def wrap(app: Callable[..., Iterable[bytes]], counter: Counter) -> Callable[..., list[bytes]]:
    def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        kind = request_type(environ)
        profile = cProfile.Profile() if counter.cprofile else None
        started = time.thread_time()
        if profile is not None:
            profile.enable()
        try:
            body = list(app(environ, start_response))  # moto's answer, produced here
        finally:
            if profile is not None:
                profile.disable()
            counter.add(kind, time.thread_time() - started, profile)
        return body

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    moto_server.install()
    counter = Counter(args.out, os.environ.get("BENCH_ENDPOINT_CPROFILE") or None)
    signal.signal(signal.SIGUSR1, lambda *_: counter.dump())
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        wrap(app, counter),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
