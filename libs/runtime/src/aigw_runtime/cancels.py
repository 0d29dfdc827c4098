"""Work a service holds for a request whose client may go away: stopped when the edge says so.

The edge broadcasts `CHAT_CANCEL` (`CancelRequest`) once nobody waits for a request's answer any
more: its client disconnected, its deadline passed, its holder went quiet, the edge is stopping.
Workers stop their upstream call; the router (a complexity classification) and retrieval (a
grounding, with its query-rewrite and rerank model calls) hold requests too, and stop them here:
the task holding the request is cancelled, so

* nothing goes on to the next hop: an upstream that was not called yet is never called, and
  nothing is billed for it;
* a model call in flight through `workercall.ask_worker` is abandoned here and stopped in the
  worker as well: model calls carry the request's id, so the worker running one hears the same
  broadcast and cancels it (an upstream that had not answered bills nothing).

Every replica hears every cancel (no queue group); those that do not hold the request remember it
briefly, since a cancel may overtake its request: the edge publishes the cancel on its own
connection, while the envelope reaches retrieval through the router's. A request whose cancel came
first is dropped on arrival.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, Final

from aigw_contracts import CancelRequest

log = logging.getLogger("aigw.cancels")

EARLY_CANCELS: Final = 10_000  # cancels remembered for requests not (yet) held here


class Cancels:
    """The tasks holding requests here, by request id, and the cancels that came before their request."""

    def __init__(self, remember: int = EARLY_CANCELS) -> None:
        self.remember = remember
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._early: OrderedDict[str, str] = OrderedDict()
        self.stopped = 0  # tasks cancelled so far (health details, tests)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancelled_before(self, request_id: str) -> str | None:
        """The reason of a cancel that arrived before the request did (then forgotten), if any."""
        return self._early.pop(request_id, None)

    def track(self, request_id: str, task: asyncio.Task[Any]) -> None:
        """Cancel `task` when `request_id` is cancelled; forgotten once the task is done."""
        self._tasks[request_id] = task

        def forget(done: asyncio.Task[Any]) -> None:
            if self._tasks.get(request_id) is done:
                del self._tasks[request_id]

        task.add_done_callback(forget)

    def on_cancel(self, raw: bytes) -> None:
        """A `CancelRequest` from the bus (called from the NATS callback: no waiting here)."""
        try:
            request = CancelRequest.model_validate_json(raw)
        except ValueError:
            log.warning("dropped a malformed cancel")
            return
        task = self._tasks.get(request.request_id)
        if task is None:
            self._early[request.request_id] = request.reason
            if len(self._early) > self.remember:
                self._early.popitem(last=False)
            return
        if not task.done():
            task.cancel()
            self.stopped += 1
            log.info(
                "request cancelled: stopped its work here",
                extra={"request_id": request.request_id, "reason": request.reason},
            )
