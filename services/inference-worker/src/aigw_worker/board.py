"""Publishes this worker's circuit states to the `aigw_circuits` key-value bucket, where the edge's
management API reads every worker's (`GET /v1/circuits`).

Only for operators to see: no worker reads the bucket to decide (`circuits.py` says why each decides
alone), so the request path never waits on it. A change is written in the background, the latest
state per circuit only; a circuit that closes deletes its entry, so the bucket holds the circuits
that are not closed. If the bus cannot take the write (a restart), the next change writes again,
and entries of a worker that died expire with the bucket's TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from aigw_contracts.streams import CIRCUITS_BUCKET, CIRCUITS_STORAGE, CIRCUITS_TTL_S
from aigw_runtime.configstore import encode_id

from .circuits import Circuit, State

log = logging.getLogger("aigw.worker.circuits")


def circuit_key(worker: str, upstream: str, deployment: str) -> str:
    return ".".join(encode_id(part) for part in (worker, upstream, deployment))


async def open_circuits_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(CIRCUITS_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=CIRCUITS_BUCKET,
                history=1,
                ttl=CIRCUITS_TTL_S,
                storage=StorageType(CIRCUITS_STORAGE),
            )
        )
    except Exception:  # created by another worker at the same moment
        return await js.key_value(CIRCUITS_BUCKET)


class CircuitBoard:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._kv: KeyValue | None = None
        self._dirty: dict[tuple[str, str], Circuit] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, js: JetStreamContext) -> None:
        try:
            self._kv = await open_circuits_bucket(js)
        except Exception as err:
            log.warning("circuit states will not be published", extra={"error": repr(err)})
            return
        self._task = asyncio.create_task(self._run(), name="aigw-circuit-board")

    def changed(self, circuit: Circuit) -> None:
        """A circuit changed state (called from `Circuits`, on the request path: no waiting)."""
        self._dirty[(circuit.upstream, circuit.deployment)] = circuit
        self._wake.set()

    async def _run(self) -> None:
        assert self._kv is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            for circuit in dirty.values():
                key = circuit_key(self.worker_id, circuit.upstream, circuit.deployment)
                try:
                    if circuit.state is State.CLOSED:
                        with contextlib.suppress(Exception):  # nothing to delete
                            await self._kv.delete(key)
                    else:
                        value = {
                            "worker": self.worker_id,
                            "upstream": circuit.upstream,
                            "deployment": circuit.deployment,
                            "state": circuit.state.name.lower(),
                            "failures": circuit.failures,
                            "open_until": circuit.open_until,
                        }
                        await self._kv.put(key, json.dumps(value).encode())
                except Exception as err:
                    log.warning("could not publish a circuit's state", extra={"error": repr(err)})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
