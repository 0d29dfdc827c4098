"""`POST /v1/embeddings` to an embedding upstream (a catalog model or a tenant's own endpoint).

The router sends a `RoutedEmbed` (`subjects.WORKER_EMBED`) with the edge's reply subject; the
answer goes straight there: an `EmbedResult` JSON line and the vectors as raw little-endian
float32 (`aigw_contracts.embeddings`), as retrieval answers for the bundled local model. The call
is one request-reply, so it needs none of the chat path's events: this module holds it all.

As chat completions: the worker holds the provider's key (own endpoints' keys arrive sealed), the
call gets the upstream's (and gateway's) timeouts, retries and its deployments' circuit breakers
(`balance.pick`, `fallback.record`, `retry.verdict`); spend control holds the most it can cost
before the call (every byte of input counted as a token, at the upstream's input price) and
settles to what it billed. The upstream's reported `prompt_tokens` are billed as
`inference.embeddings.in` at its input price (own endpoints at 0), estimated from the text (four
characters a token) when it reports none; the usage event is stored before the answer goes out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
from array import array
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from aigw_contracts import RoutedCall, UsageEvent, errors, skus
from aigw_contracts.api import GeneratedUsage
from aigw_contracts.embeddings import EmbedResult, RoutedEmbed

from . import observe
from .balance import pick
from .bus import Bus
from .context import WorkerContext
from .fallback import record
from .pricing import MAX_REPORTED_TOKENS, estimate_tokens
from .providers import Prepared
from .retry import MIN_ATTEMPT_S, Verdict, verdict, wait_before_retry
from .spend import Payer
from .timeouts import limits_for

log = logging.getLogger("aigw.worker.embed")

_HEADROOM = 4096  # bytes of the bus payload kept for the JSON line and headers
_SWAP = sys.byteorder != "little"
_DEFAULT_DEADLINE_S = 60.0  # a job without a deadline (an older edge) still ends


def _vectors(content: bytes, count: int, dimensions: int | None) -> tuple[bytes, int, int | None]:
    """The upstream's OpenAI-shaped answer as raw float32 rows (in input order), their width, and
    the prompt tokens it reported (None: not reported)."""
    try:
        answer = json.loads(content)
        rows: list[Any] = sorted(answer["data"], key=lambda item: item["index"])
    except (ValueError, KeyError, TypeError):
        raise errors.UpstreamError("The upstream sent an answer that is not an embeddings list") from None
    if len(rows) != count:
        raise errors.UpstreamError(f"The upstream sent {len(rows)} embeddings for {count} inputs")
    out = array("f")
    dim = 0
    for row in rows:
        value = row.get("embedding") if isinstance(row, dict) else None
        vector = array("f")
        if isinstance(value, str):  # base64 float32, as OpenAI sends for encoding_format=base64
            vector.frombytes(base64.b64decode(value))
            if _SWAP:
                vector.byteswap()
        elif isinstance(value, list) and all(isinstance(x, int | float) for x in value):
            vector.extend(float(x) for x in value)
        else:
            raise errors.UpstreamError("The upstream sent an embedding that is not a list of numbers")
        if not vector or (dim and len(vector) != dim) or (dimensions and len(vector) != dimensions):
            raise errors.UpstreamError("The upstream sent embeddings of inconsistent dimensions")
        dim = len(vector)
        out.extend(vector)
    if _SWAP:
        out.byteswap()
    usage = answer.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    valid = isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens <= MAX_REPORTED_TOKENS
    return out.tobytes(), dim, tokens if valid else None


class EmbedCall:
    """One routed embedding job on this worker."""

    def __init__(self, worker: WorkerContext, routed: RoutedEmbed) -> None:
        self.worker = worker
        self.routed = routed
        job = routed.job
        self.job = job
        deadline = job.deadline or time.time() + _DEFAULT_DEADLINE_S
        self.payer = Payer(job.request_id, job.tenant, job.key_id, routed.gateway_id, deadline)
        self.inputs: list[str] | list[list[int]] = job.texts if job.texts is not None else (job.tokens or [])

    def remaining(self) -> float:
        return self.payer.deadline - time.time()

    def max_cost(self) -> Decimal:
        """Every byte of input a token (a token is at least a byte), or a token id one token."""
        count = sum(len(item.encode()) if isinstance(item, str) else len(item) for item in self.inputs)
        return count * self.routed.upstream.prices.input

    async def run(self) -> bytes:
        spend = self.worker.spend
        hold_id = f"{self.job.request_id}:embeddings"
        held = []
        if spend is not None:
            held = await spend.hold(self.payer, self.max_cost(), hold_id, "fewer or shorter inputs")
        billed = Decimal(0)
        try:
            started = datetime.now(UTC)
            began = time.perf_counter()
            raw, dim, tokens = await self._call()
            lines = self._lines(tokens)
            billed = sum((line.amount for line in lines), Decimal(0))
            await self._meter(lines, started, (time.perf_counter() - began) * 1000)
        finally:
            if spend is not None:
                spend.settle_amount(self.payer, hold_id, held, billed)
        head = EmbedResult(
            model=self.routed.upstream.id,
            count=len(self.inputs),
            dim=dim,
            tokens=sum(line.quantity for line in lines),
            lines=lines,
        )
        return head.model_dump_json().encode() + b"\n" + raw

    def _lines(self, tokens: int | None) -> list[GeneratedUsage]:
        target = self.routed.upstream
        if tokens is None:  # not reported: estimated from the text, as for chat (`pricing.py`)
            tokens = sum(
                estimate_tokens(len(item)) if isinstance(item, str) else len(item) for item in self.inputs
            )
        description = skus.embeddings_description(target.id)
        return [GeneratedUsage.priced(skus.EMBEDDINGS_IN, target.prices.input, tokens, description)]

    async def _meter(self, lines: list[GeneratedUsage], started: datetime, latency_ms: float) -> None:
        """The usage event, stored by the usage stream before the answer goes out."""
        usage = self.worker.usage
        target = self.routed.upstream
        if usage is None or not lines[0].quantity:
            return
        event = UsageEvent(
            request_id=self.job.request_id,
            source="inference",
            tenant=self.job.tenant,
            key_id=self.job.key_id,
            gateway_id=self.routed.gateway_id,
            upstream=target.id,
            upstream_kind=target.kind,
            model=target.model,
            lines=lines,
            metadata=self.job.metadata,
            started_at=started,
            latency_ms=latency_ms,
        )
        within = min(5.0, max(self.remaining(), 0.5))
        if not await usage.durable([event], within, None):
            log.warning("embedding usage not acknowledged yet", extra={"request_id": self.job.request_id})
        cost = sum((line.amount for line in lines), Decimal(0))
        observe.TOKENS(self.routed.gateway_slug or "", target.id, "input").inc(lines[0].quantity)
        observe.COST(self.routed.gateway_slug or "", target.id).inc(float(cost))

    def _body(self) -> bytes:
        body: dict[str, Any] = {"model": self.routed.upstream.model, "input": self.inputs}
        if self.job.dimensions is not None:
            body["dimensions"] = self.job.dimensions
        if self.job.metadata.get("user"):
            body["user"] = self.job.metadata["user"]
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    async def _call(self) -> tuple[bytes, int, int | None]:
        """The upstream's answer, retried as a chat call's first attempt is (`fallback.py`): an
        embedding gateway has no fallback chain, so every retry goes to the same upstream."""
        settings = self.worker.settings
        circuits = self.worker.circuits
        upstream = self.worker.upstream
        target = self.routed.upstream
        allowed = target.max_retries if target.max_retries is not None else settings.upstream_max_retries
        body = self._body()
        # the gateway's timeouts over the upstream's own, as `limits_for` reads them off a route
        timing = RoutedCall(upstream=target, body={}, response_model=target.id, timeouts=self.routed.timeouts)
        retries = 0
        avoid: set[str] = set()
        while True:
            chosen = pick(target, circuits, avoid) or pick(target, circuits, avoid, paused_too=True)
            if chosen is None:
                raise errors.Unavailable(
                    "The embedding upstream cannot take a request now (circuit open after repeated "
                    "failures); retry later",
                    retry_after=1,
                )
            remaining = self.remaining()
            if remaining < MIN_ATTEMPT_S:
                circuits.release(chosen.circuit)
                raise errors.DeadlineExceeded("The request's deadline passed before the upstream answered")
            called = target
            if chosen.base_url and chosen.base_url != target.base_url:
                called = target.model_copy(update={"base_url": chosen.base_url})
            limits = limits_for(settings, timing, False, remaining)
            began = time.perf_counter()
            err: BaseException | None = None
            try:
                request = await upstream.build(
                    called, Prepared("embeddings", body), remaining, False, limits, api_key=chosen.api_key
                )
                async with asyncio.timeout(limits.total):
                    content = await upstream.fetch(request)
                result = _vectors(content, len(self.inputs), self.job.dimensions)
            except TimeoutError:
                err = errors.DeadlineExceeded("The embedding upstream did not answer in time")
            except errors.GatewayError as exc:
                err = exc
            except BaseException as exc:
                circuits.release(chosen.circuit)
                observe.ATTEMPTS(target.id, observe.outcome(exc)).inc()
                raise
            finally:
                observe.DURATION(target.id).observe(time.perf_counter() - began)
            if err is None:
                circuits.succeeded(chosen.circuit)
                observe.ATTEMPTS(target.id, observe.outcome(None)).inc()
                return result
            assert isinstance(err, errors.GatewayError)
            observe.ATTEMPTS(target.id, observe.outcome(err)).inc()
            record(circuits, chosen, err)
            if verdict(err) is Verdict.STOP or retries >= allowed:
                raise err
            delay = wait_before_retry(err, retries, settings)
            if delay is None or delay >= self.remaining() - MIN_ATTEMPT_S:
                raise err
            retries += 1
            avoid.add(chosen.name)
            observe.RETRIES.labels(target.id).inc()
            await asyncio.sleep(delay)


async def answer(worker: WorkerContext, bus: Bus, data: bytes, reply: str) -> None:
    """Answer one `RoutedEmbed` at `reply` (the edge's inbox): the vectors, or the error."""
    request_id = ""
    try:
        routed = RoutedEmbed.model_validate_json(data)
        request_id = routed.job.request_id
        call = EmbedCall(worker, routed)
        fits = (bus.max_payload - _HEADROOM) // (4 * (routed.job.dimensions or 1))
        if routed.job.dimensions is not None and len(call.inputs) > fits:
            raise errors.InvalidRequest(
                f"At most {fits} inputs per request at {routed.job.dimensions} dimensions; split the request.",
                param="input",
            )
        payload, hdrs = await call.run(), None
    except ValidationError as exc:
        payload, hdrs = errors.error_reply(errors.invalid_message(exc, "embedding job"))
    except errors.GatewayError as err:
        payload, hdrs = errors.error_reply(err)
    except Exception:
        log.exception("embedding failed", extra={"request_id": request_id})
        payload, hdrs = errors.error_reply(errors.InternalError("The embedding failed; it has been logged."))
    await bus.send_reply(reply, payload, hdrs)
