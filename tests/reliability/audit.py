"""Audits, made while the real agent runs, of the rule "delete the message last"."""

from __future__ import annotations

import json
import threading

from agent.errors import IntegrityError, MalformedMessage
from agent.events import parse_message
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from bench.proxy import Exchange


class DeleteAudit:
    """Sees every ReceiveMessage answer and checks each message deleted (one by one or in a
    batch) before moto gets the request: every event of that message must have its ledger
    record and a verifying copy."""

    def __init__(self, ledger: Ledger, volume: Volume) -> None:
        self.ledger = ledger
        self.volume = volume
        self.bodies: dict[str, str] = {}
        self.violations: list[str] = []
        self.audited = 0
        self._lock = threading.Lock()

    def observe(self, exchange: Exchange) -> None:
        if (exchange.service, exchange.operation) != ("sqs", "ReceiveMessage"):
            return
        if exchange.status != 200:
            return
        with self._lock:
            for message in json.loads(exchange.response_body).get("Messages", []):
                self.bodies[message["ReceiptHandle"]] = message["Body"]

    def audit(self, exchange: Exchange) -> None:
        """Check every message a DeleteMessage or DeleteMessageBatch is about to delete."""
        if exchange.service != "sqs":
            return
        request = json.loads(exchange.request_body) if exchange.request_body else {}
        if exchange.operation == "DeleteMessage":
            handles = [request["ReceiptHandle"]]
        elif exchange.operation == "DeleteMessageBatch":
            handles = [entry["ReceiptHandle"] for entry in request["Entries"]]
        else:
            return
        for handle in handles:
            with self._lock:
                body = self.bodies.get(handle)
            problems = self._problems(body)
            with self._lock:
                self.audited += 1
                self.violations.extend(problems)

    def _problems(self, body: str | None) -> list[str]:
        if body is None:
            return ["DeleteMessage for a receipt handle never received"]
        try:
            parsed = parse_message(body)
        except MalformedMessage:
            return [f"a malformed message was deleted: {body[:80]!r}"]
        problems = []
        for event in parsed.events:
            record = self.ledger.get_version(event.bucket, event.key, event.version_token)
            if record is None or not record.sha256:
                problems.append(f"{event.key}: deleted before its ledger record existed")
                continue
            try:
                self.volume.verify_copy(record.sha256, record.size)
            except IntegrityError as exc:
                problems.append(f"{event.key}: deleted before its copy was durable ({exc})")
        return problems
