"""Batched SQS deletes: one DeleteMessageBatch for up to ten finished messages.

The consumer hands a message over only once its work is durable and recorded; the
batcher's thread sends what has gathered as soon as ten are waiting or `max_delay`
(500 ms) after the first one, whichever comes first. A delete that fails is logged and left:
the message comes back after its visibility timeout and its redelivery is a no-op.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import botocore.exceptions
import structlog

from agent.aws import error_code, lost_handle

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchRequestEntryTypeDef

log = structlog.get_logger("agent.deletes")

BATCH_LIMIT = 10  # SQS's limit per DeleteMessageBatch
# How long a partial batch waits for company: 500 ms (AWS's own buffering SQS client waits
# 200 ms, maxBatchOpenMs; at 1-2 workers, 15-20 objects/s on the bench's loaded endpoint,
# that sent ~3 per call: docs/benchmarks.md, "Small objects: lingering"). A finished message
# is already durable, so waiting costs nothing but that much longer "in flight" (far inside
# its visibility timeout); a crash meanwhile only means a no-op redelivery.
DEFAULT_MAX_DELAY = 0.5


@dataclass(frozen=True, slots=True)
class PendingDelete:
    message_id: str
    receipt_handle: str
    added_at: float


class DeleteBatcher:
    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        *,
        max_delay: float = DEFAULT_MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.max_delay = max_delay
        self.clock = clock
        self._pending: list[PendingDelete] = []
        self._sending = 0
        self._urgent = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, message_id: str, receipt_handle: str) -> None:
        """Queue a finished message for deletion (starts the sending thread on first use)."""
        pending = PendingDelete(message_id, receipt_handle, self.clock())
        with self._cond:
            closed = self._closed
            if not closed:
                self._pending.append(pending)
                self._start_thread()
                self._cond.notify_all()
        if closed:
            self._send([pending])  # a worker that outlived stop(): delete at once

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="consumer-deletes", daemon=True)
            self._thread.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything added so far was sent; False on timeout."""
        with self._cond:
            self._urgent = bool(self._pending)  # send now, whatever the batch size
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending and not self._sending, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is pending, then stop the thread. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending) + self._sending

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._send(batch)
            except Exception:  # this thread must outlive any one batch
                # Left to redelivery (a no-op), like a failed delete.
                log.exception("message.delete_batch_crashed", messages=len(batch))
            with self._cond:
                self._sending = 0
                self._cond.notify_all()

    def _next_batch(self) -> list[PendingDelete] | None:
        with self._cond:
            while True:
                wait = self._due_in()
                if wait is not None and wait <= 0:
                    batch = self._pending[:BATCH_LIMIT]
                    del self._pending[:BATCH_LIMIT]
                    self._urgent = self._urgent and bool(self._pending)
                    self._sending = len(batch)
                    return batch
                if self._closed:
                    return None
                self._cond.wait(wait)

    def _due_in(self) -> float | None:
        """Seconds until the next batch is due (<= 0: now); None with nothing pending."""
        if not self._pending:
            return None
        if self._closed or self._urgent or len(self._pending) >= BATCH_LIMIT:
            return 0.0
        return self._pending[0].added_at + self.max_delay - self.clock()

    def _send(self, batch: list[PendingDelete]) -> None:
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": p.receipt_handle} for i, p in enumerate(batch)
        ]
        try:
            response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            # The work is durable; a redelivery will be a no-op.
            for pending in batch:
                log.warning(
                    "message.delete_failed",
                    message_id=pending.message_id,
                    error=str(exc),
                    code=error_code(exc),
                    lost_handle=lost_handle(error_code(exc)),
                )
            return
        for failed in response.get("Failed", []):
            pending = batch[int(failed["Id"])]
            code = str(failed.get("Code", ""))
            log.warning(
                "message.delete_failed",
                message_id=pending.message_id,
                error=failed.get("Message", ""),
                code=code,
                lost_handle=lost_handle(code),  # expired or received again: it comes back
            )
