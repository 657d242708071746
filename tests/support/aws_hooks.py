"""Faults injected into real boto3 clients (moto behind them), and a record of their calls.

botocore emits `provide-client-params.<service>.<Operation>` with the API parameters and
`before-call.<service>.<Operation>` just before sending; a `before-call` handler that returns
`(http_response, parsed)` replaces the request, so an error returned there is raised by the
client exactly as one from AWS would be (without botocore's own retries).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse, HTTPHeaders


@dataclass
class Call:
    operation: str
    params: dict[str, Any]


@dataclass
class CallLog:
    """Every call a client made, in order (thread-safe); `on_call` sees each as it happens.

    `received` keeps every message SQS ReceiveMessage returned (to map receipt handles)."""

    calls: list[Call] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    on_call: Callable[[Call], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def message_id(self, receipt_handle: str) -> str:
        with self._lock:
            for message in self.received:
                if message["ReceiptHandle"] == receipt_handle:
                    return str(message["MessageId"])
        raise KeyError(receipt_handle)

    def operations(self) -> list[str]:
        with self._lock:
            return [c.operation for c in self.calls]

    def of(self, operation: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c.params for c in self.calls if c.operation == operation]

    def deleted_handles(self) -> list[str]:
        """Receipt handles of every SQS delete sent, single or batched, in order."""
        handles: list[str] = []
        with self._lock:
            for call in self.calls:
                if call.operation == "DeleteMessage":
                    handles.append(call.params["ReceiptHandle"])
                elif call.operation == "DeleteMessageBatch":
                    handles.extend(e["ReceiptHandle"] for e in call.params["Entries"])
        return handles

    def add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
        if self.on_call:
            self.on_call(call)


def record_calls(client: Any, log: CallLog | None = None) -> CallLog:
    """Record the operation name and API parameters of every call `client` makes."""
    log = log or CallLog()
    service = client.meta.service_model.service_id.hyphenize()

    def remember(params: dict[str, Any], model: Any, **_: Any) -> None:
        log.add(Call(model.name, dict(params)))

    def keep_messages(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "ReceiveMessage":
            with log._lock:
                log.received.extend(parsed.get("Messages", []))

    client.meta.events.register(f"provide-client-params.{service}", remember)
    client.meta.events.register(f"after-call.{service}", keep_messages)
    return log


@dataclass
class Fault:
    """Fail calls of one operation with an AWS error code while `when(params)` holds."""

    operation: str
    code: str
    status: int = 400
    when: Callable[[dict[str, Any]], bool] = lambda _params: True
    times: int | None = None  # None: every matching call
    message: str | None = None  # the error's Message (default "injected CODE")
    extra: dict[str, Any] = field(default_factory=dict)  # more fields of the parsed error
    injected: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, params: dict[str, Any]) -> bool:
        with self._lock:
            if self.times is not None and self.injected >= self.times:
                return False
            if not self.when(params):
                return False
            self.injected += 1
            return True


def inject(client: Any, fault: Fault) -> Fault:
    service = client.meta.service_model.service_id.hyphenize()

    def keep_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["fault_params"] = dict(params)

    def maybe_fail(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not fault.take(context.get("fault_params", {})):
            return None
        http = AWSResponse("https://fault.invalid/", fault.status, HTTPHeaders(), None)
        parsed = {
            "Error": {"Code": fault.code, "Message": fault.message or f"injected {fault.code}"},
            "ResponseMetadata": {"HTTPStatusCode": fault.status, "HTTPHeaders": {}},
            **fault.extra,
        }
        return http, parsed

    client.meta.events.register(f"provide-client-params.{service}.{fault.operation}", keep_params)
    client.meta.events.register(f"before-call.{service}.{fault.operation}", maybe_fail)
    return fault
