"""moto's ReceiveMessage one at a time, its DeleteMessage whole, its message counts taken at
one instant: three races of the local AWS stand-in taken out.

moto 5.2.5's `SQSBackend.receive_message` looks at each message's visibility and marks it
received without a lock, so two ReceiveMessage requests served at once (moto_server answers
each request in a thread of its own) can both take the same visible message: it is then
delivered twice within its visibility timeout. Real SQS standard queues deliver at least
once and may also deliver a message twice, which the agent handles (the ledger's conditional
write keeps one holder; a fleet member's losing copy is counted and freed by gc), but moto
did it at every such coincidence: the full bench of 2026-12-01 16:28 saw 301 receives for
300 messages with 2 agents, and the fleet e2e tests, which count copies, depended on how the
threads were scheduled.

The second race: `Queue.delete_message` builds the queue's list of messages without the one
deleted and then assigns it, without a lock. Two deletes at once (two members' delete
threads on one queue, in-process or in moto_server) can each build their list from the list
before the other's delete, and the one assigned last puts the other's message back: deleted
for the agent, in flight for moto, delivered again after its visibility timeout. A message
sent at that moment (`add_message` appends under the queue's lock), a message a receive
moves to the dead-letter queue (`_messages.remove`) and a purge (`_messages = []`) race
with it alike. The CI run of 2026-12-01 23:45 failed on it:
`test_two_daemons_on_one_queue_copy_every_version_once` saw every version recorded and one
message still in flight 30 s later. Real SQS documents the like only as rare (DeleteMessage:
"for standard queues, it is possible to receive a message even after you delete it", when a
server holding a copy was unavailable at the delete), which the agent handles as any
redelivery (the version is recorded: a no-op, then deleted again); moto did it at every
coincidence of two deletes, so a test waiting for the queue to drain depended on thread
scheduling.

Installed, every change to a queue's messages holds that queue's own lock
(`Queue._messages_lock`, the Condition `add_message` already takes): a receive (one at a
time per queue, its move to the dead-letter queue included), a delete and a purge. A long
poll lets the others in while it waits for messages: moto waits on that same Condition,
which lets go of the lock (an RLock, however deep) while it waits. tests/unit/test_moto_sqs.py
shows both races on moto as released and their absence with this installed; `install()` is
called by tests/support/moto_server.py's `install()`.

The third: GetQueueAttributes reads ApproximateNumberOfMessages (visible messages) and then
ApproximateNumberOfMessagesNotVisible (the rest), each looking at the clock again, so a
message whose visibility timeout ends between the two reads is in neither: the queue looks
empty while it holds a message. The tests' "drained" checks (visible + in flight == 0) then
stop a run early. A CI run of 2026-12-02 failed on it:
`test_a_crash_loop_dead_letters_only_the_message_that_kills_the_agent` stopped its fourth
run while the poison (received three times, about to be moved to the dead-letter queue by
the next receive) was turning visible again, and found the dead-letter queue empty. Real SQS
documents these counts as approximate (they "may not achieve consistency until at least 1
minute after the producers stop sending messages", GetQueueAttributes reference), so no
agent logic relies on them (they are reported by `status` and the monitor only); for the
tests' checks the stand-in now counts each message once: installed, the three counts come
from one look at each message (moto's GetQueueAttributes builds its answer from a fresh
`Queue.attributes` for each name asked for, so the counts are put in after it).
"""

from __future__ import annotations

import contextlib
from typing import Any

from moto.sqs.models import Queue, SQSBackend

from tests.support import patching

_MOTO_RECEIVE = SQSBackend.receive_message
_MOTO_PURGE = SQSBackend.purge_queue
_MOTO_DELETE = Queue.delete_message
_MOTO_ATTRIBUTES = SQSBackend.get_queue_attributes
_installed = False


def _receive_message(self: SQSBackend, queue_name: str, *args: Any, **kwargs: Any) -> Any:
    with self.get_queue(queue_name)._messages_lock:
        return _MOTO_RECEIVE(self, queue_name, *args, **kwargs)


def _purge_queue(self: SQSBackend, queue_name: str) -> None:
    with self.get_queue(queue_name)._messages_lock:
        _MOTO_PURGE(self, queue_name)


def _delete_message(self: Queue, receipt_handle: str) -> None:
    with self._messages_lock:
        _MOTO_DELETE(self, receipt_handle)


def _counts(queue: Queue) -> dict[str, int]:
    visible = not_visible = delayed = 0
    with queue._messages_lock:  # a receive's messages turn invisible together
        for message in queue._messages:  # each message looked at once
            is_visible, is_delayed = message.visible, message.delayed
            visible += is_visible and not is_delayed
            not_visible += not is_visible
            delayed += is_delayed
    return {
        "ApproximateNumberOfMessages": visible,
        "ApproximateNumberOfMessagesNotVisible": not_visible,
        "ApproximateNumberOfMessagesDelayed": delayed,
    }


def _get_queue_attributes(
    self: SQSBackend, queue_name: str, attribute_names: list[str]
) -> dict[str, Any]:
    result = _MOTO_ATTRIBUTES(self, queue_name, attribute_names)
    counts = _counts(self.get_queue(queue_name))
    return {name: counts.get(name, value) for name, value in result.items()}


def installed() -> bool:
    return _installed


def install() -> None:
    global _installed
    SQSBackend.receive_message = _receive_message  # type: ignore[method-assign]
    SQSBackend.purge_queue = _purge_queue  # type: ignore[method-assign]
    Queue.delete_message = _delete_message  # type: ignore[method-assign]
    SQSBackend.get_queue_attributes = _get_queue_attributes  # type: ignore[method-assign]
    _installed = True


def uninstall() -> None:
    global _installed
    SQSBackend.receive_message = _MOTO_RECEIVE  # type: ignore[method-assign]
    SQSBackend.purge_queue = _MOTO_PURGE  # type: ignore[method-assign]
    Queue.delete_message = _MOTO_DELETE  # type: ignore[method-assign]
    SQSBackend.get_queue_attributes = _MOTO_ATTRIBUTES  # type: ignore[method-assign]
    _installed = False


def as_released() -> contextlib.AbstractContextManager[None]:
    """moto as released while inside (as it was after)."""
    return patching.released(installed, install, uninstall)
