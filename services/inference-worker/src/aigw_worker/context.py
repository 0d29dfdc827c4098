"""What a request needs of the worker that runs it, as a protocol.

`Worker` (worker.py) starts `Call`s and a `Call` uses the worker's upstream client, bus and usage
publisher: typing that with the `Worker` class itself would make `call.py` and `worker.py` import
each other. The request modules depend on this protocol instead, which `Worker` satisfies as is.
"""

from __future__ import annotations

from typing import Protocol

from aigw_runtime.usage_publisher import UsagePublisher

from .bus import Bus
from .circuits import Circuits
from .settings import WorkerSettings
from .spend import SpendControl
from .upstream import Upstream


class WorkerContext(Protocol):
    settings: WorkerSettings
    upstream: Upstream
    bus: Bus | None  # None until the worker has started
    usage: UsagePublisher | None
    spend: SpendControl | None  # None: spend control is off (`AIGW_SPEND_ENABLED=false`)
    circuits: Circuits
