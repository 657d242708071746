"""A small HTTP proxy on loopback in front of moto_server, for the real agent process.

The agent's `aws.endpoint_url` points here. Each request is classified (service and
operation), may get a fault instead of (or after) being forwarded, and observers see the
exchange. The kill -9 test uses an observer to audit every SQS delete (single or batched)
*before* it reaches moto: the message's copy and ledger record must already be durable.

`latency` delays every request before it is forwarded, as a network round trip would: the
benchmark's fleet section uses it so that round trips, not the local endpoint's CPU, bound
each agent. Shared by the reliability suite and the benchmarks (here, because bench/ does
not import tests/; `tests/reliability/proxy.py` re-exports it).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}

# Fault kinds
THROTTLE = "throttle"
SERVER_ERROR = "500"
DROP = "drop"  # close the connection without an answer (the service never saw it)
LOST_RESPONSE = "lost_response"  # forward, then close the connection without the answer
SLOW = "slow"  # answer late (within the client's read timeout)


@dataclass
class Exchange:
    service: str
    operation: str
    request_body: bytes
    status: int = 0
    response_body: bytes = b""


Rule = Callable[[str, str], str | None]
Observer = Callable[[Exchange], None]


SIGNED_SERVICES = {"monitoring": "cloudwatch", "sns": "sns", "email": "ses", "ses": "ses"}
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([a-z0-9-]+)/aws4_request")


def classify_request(method: str, path: str, headers: Any, body: bytes = b"") -> tuple[str, str]:
    target = headers.get("X-Amz-Target", "")
    scope = _SCOPE.search(headers.get("Authorization", ""))
    if scope and scope[1] in SIGNED_SERVICES:  # CloudWatch (JSON or CBOR), SNS and SES (query)
        parts = urlparse(path).path.split("/")
        if target:
            operation = target.split(".")[-1]
        elif "operation" in parts:  # smithy RPC v2 CBOR: /service/<name>/operation/<op>
            operation = parts[-1]
        else:
            operation = parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
        return SIGNED_SERVICES[scope[1]], operation
    if target.startswith("AmazonSQS."):
        return "sqs", target.split(".", 1)[1]
    if target.startswith("DynamoDB_"):
        return "dynamodb", target.split(".", 1)[1]
    if target:
        return target.split(".", 1)[0].lower(), target.split(".", 1)[-1]
    parts = [p for p in urlparse(path).path.split("/") if p]
    if method == "GET" and len(parts) >= 2:
        return "s3", "GetObject"
    if method == "HEAD" and len(parts) >= 2:
        return "s3", "HeadObject"
    return "s3", f"{method} {'/'.join(parts[:1])}"


def error_body(service: str, fault: str) -> tuple[int, str, bytes]:
    if service in ("sns", "ses"):  # query protocol: an XML ErrorResponse
        status, code = (400, "Throttling") if fault == THROTTLE else (500, "InternalFailure")
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code></Error></ErrorResponse>"
        )
        return status, "text/xml", body.encode()
    if service == "s3":
        status, code = (503, "SlowDown") if fault == THROTTLE else (500, "InternalError")
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
        return status, "application/xml", body.encode()
    if fault == THROTTLE:
        kind = {
            "dynamodb": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "sqs": "com.amazonaws.sqs#ThrottlingException",
            "cloudwatch": "Throttling",
        }.get(service, "ThrottlingException")
        status = 400
    else:
        kind, status = "InternalFailure", 500
    payload = json.dumps({"__type": kind, "message": f"injected {fault}"}).encode()
    return status, "application/x-amz-json-1.0", payload


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed with -9 or a dropped connection is expected here, not news."""


class FaultProxy:
    """`with FaultProxy(upstream) as proxy: proxy.endpoint` — rules decide faults per request."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.rules: list[Rule] = []
        self.observers: list[Observer] = []
        self.auditors: list[Observer] = []  # run before forwarding; may raise to refuse
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.slow_seconds = 2.0
        self.latency = 0.0  # seconds added to every forwarded request (a round trip)
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def calls_so_far(self) -> Counter[str]:
        """A copy of `calls` (requests received per service.operation, faults included)."""
        with self._lock:
            return Counter(self.calls)

    def fault_for(self, service: str, operation: str) -> str | None:
        with self._lock:
            self.calls[f"{service}.{operation}"] += 1
            for rule in self.rules:
                fault = rule(service, operation)
                if fault:
                    self.injected[f"{service}.{operation}:{fault}"] += 1
                    return fault
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                service, operation = classify_request(self.command, self.path, self.headers, body)
                exchange = Exchange(service, operation, body)
                fault = proxy.fault_for(service, operation)
                if fault == DROP:
                    self.close_connection = True
                    return
                if fault in (THROTTLE, SERVER_ERROR):
                    status, content_type, payload = error_body(service, fault)
                    self._answer(status, [("Content-Type", content_type)], payload)
                    return
                for auditor in proxy.auditors:
                    auditor(exchange)
                if fault == SLOW:
                    time.sleep(proxy.slow_seconds)
                if proxy.latency:
                    time.sleep(proxy.latency)
                status, headers, payload = self._forward(body)
                exchange.status, exchange.response_body = status, payload
                for observer in proxy.observers:
                    observer(exchange)
                if fault == LOST_RESPONSE:
                    self.close_connection = True
                    return
                self._answer(status, headers, payload)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    drop = HOP_BY_HOP if self.command == "HEAD" else {*HOP_BY_HOP, "content-length"}
                    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in drop]
                    return response.status, kept, payload
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler
