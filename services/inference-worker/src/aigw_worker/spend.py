"""Spend control on the worker: hold the most a call can cost before its upstream is called, settle
to the exact lines it billed after, and publish budget alerts.

Why here and not at the edge: the worker is the one place that knows, for every model call of a
request (the answer, the router's complexity classification, retrieval's rewrites and reranks),
which upstreams it may call (fallbacks), at which prices, how many tool rounds it may run, and
then exactly which lines it billed. The edge knows the key and tenant, and so does the envelope the
worker receives. A refusal is an error event like any other, so the edge answers it as it answers
every worker error (402 `insufficient_quota`, `x-should-retry: false`), before any upstream call.

The most a call can cost (`max_cost`): every byte of the upstream body counts as a token (a token
is at least one byte in every tokenizer we price), its output is `max_tokens` (or
`max_completion_tokens`) × `n`, else the upstream's context window, else
`AIGW_SPEND_MAX_OUTPUT_TOKENS`; priced at the dearest upstream of its fallback chain; a `QueryFunction`
gateway's call is that for each of its rounds (each reading what the earlier ones wrote and found),
plus its searches. Knowledge lines priced before the worker (retrieval's search and embeddings),
already spent, are held and settled with the answer, since nothing else settles them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from aigw_contracts import ChatEnvelope, RoutedCall, UsageEvent, subjects
from aigw_contracts.config import Prices
from aigw_contracts.errors import InsufficientQuota, Unavailable
from aigw_contracts.spend import ZERO, Shortfall, SpendAlert, period_id
from aigw_runtime.spend import AccountRef, SpendAccounts, publish_spend_event
from aigw_runtime.spendlease import Crossed, SpendLeases

from .settings import WorkerSettings

log = logging.getLogger("aigw.worker.spend")

KNOWLEDGE_PREFIX = "knowledge."  # SKUs retrieval meters itself (`aigw_contracts.skus`)


@dataclass(frozen=True, slots=True)
class Payer:
    """Who pays for a request, and until when its hold must last: a chat envelope's, or an
    embedding job's (`embed.py`)."""

    request_id: str
    tenant: str
    key_id: str
    gateway_id: str | None
    deadline: float

    @classmethod
    def of(cls, envelope: ChatEnvelope, route: RoutedCall) -> Payer:
        return cls(envelope.request_id, envelope.tenant, envelope.key_id, route.gateway_id, envelope.deadline)


def accounts_of(payer: Payer) -> list[AccountRef]:
    tenant = payer.tenant
    refs = [AccountRef("tenant", tenant, tenant), AccountRef("key", payer.key_id, tenant)]
    if payer.gateway_id is not None:
        refs.append(AccountRef("gateway", payer.gateway_id, tenant))
    return refs


def prior_knowledge(route: RoutedCall) -> Decimal:
    """Retrieval's own lines in an answer's request (its searches), which the answer settles."""
    if route.purpose != "chat":
        return ZERO
    return sum((line.amount for line in route.prior_usage if line.sku.startswith(KNOWLEDGE_PREFIX)), ZERO)


def max_cost(route: RoutedCall, settings: WorkerSettings) -> Decimal:
    """The most this call can cost (see the module's docstring for the bound)."""
    body = route.body
    prompt = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    n = body.get("n")
    choices = n if isinstance(n, int) and n > 0 else 1
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    targets = [route.upstream, *route.fallbacks]
    output = 0
    for target in targets:
        limit = target.context_window or settings.spend_max_output_tokens
        output = max(output, min(asked, limit) if isinstance(asked, int) and asked > 0 else limit)
    output *= choices
    rounds = route.knowledge_tool.max_rounds + 1 if route.knowledge_tool is not None else 1
    round_prompt = prompt + (rounds - 1) * (output + settings.spend_tool_result_tokens)
    dearest = max(rounds * (round_prompt * _in(t.prices) + output * _out(t.prices)) for t in targets)
    searches = (rounds - 1) * settings.spend_tool_round_cost
    return dearest + searches + prior_knowledge(route)


def _in(p: Prices) -> Decimal:
    """The dearest an input token can be billed: a cache write costs more than a plain input."""
    return max(p.input, p.cache_write, p.cache_write_1h or ZERO)


def _out(p: Prices) -> Decimal:
    """The dearest an output token can be billed (reasoning, where priced apart)."""
    return max(p.output, p.reasoning or ZERO)


class SpendControl:
    """The worker's side of spend control: reserve, settle, release, alert."""

    def __init__(self, accounts: SpendAccounts, js: JetStreamContext, settings: WorkerSettings) -> None:
        self.accounts = accounts
        self.js = js
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self.leases: SpendLeases | None = None
        if settings.spend_leases:  # holds from this worker's slices: no write on the request path
            self.leases = SpendLeases(
                accounts,
                settings.worker_id,
                grace=settings.spend_hold_grace,
                holds=settings.spend_lease_holds,
                share=settings.spend_lease_share,
                idle=settings.spend_lease_idle,
                flush=settings.spend_lease_flush,
                on_crossed=self._alert,
            )
            self.leases.start()

    async def reserve(self, envelope: ChatEnvelope, route: RoutedCall, hold_id: str) -> list[AccountRef]:
        """Hold a chat call's most (`max_cost`); see `hold`. A refused call's searches were billed
        all the same (retrieval ran them before this call): they count as spent, as in ClickHouse."""
        payer = Payer.of(envelope, route)
        try:
            return await self.hold(payer, max_cost(route, self.settings), hold_id, "max_tokens")
        except InsufficientQuota:
            self._charge_searches(payer, route)
            raise

    async def hold(self, payer: Payer, amount: Decimal, hold_id: str, smaller: str) -> list[AccountRef]:
        """Hold `amount` on every account of the payer's tenant, key and gateway (those that exist:
        a hold is also what makes its settlement count once), or raise the 402 (`smaller`: what
        the client may ask less of). Returns the accounts held (none: no account exists, nothing
        was written)."""
        refs = self.accounts.existing(accounts_of(payer))
        if not refs:
            return []
        expires = payer.deadline + self.settings.spend_hold_grace
        try:
            await (self.leases or self.accounts).reserve(refs, hold_id, amount, expires)
        except Shortfall as short:
            raise InsufficientQuota(
                f"This request may cost up to ${amount:f}, more than the {short.limit} allows "
                f"(${short.remaining:f} left). Add credit or raise the budget, or ask for less "
                f"({smaller})."
            ) from None
        except (NatsError, TimeoutError, RuntimeError) as err:  # the bus, not the request
            log.warning(
                "spend accounts unavailable", extra={"request_id": payer.request_id, "error": repr(err)}
            )
            raise Unavailable("Spend accounts are unavailable; retry the request", retry_after=1) from None
        return refs

    def _charge_searches(self, payer: Payer, route: RoutedCall) -> None:
        """Count a refused answer's searches as spent, without a hold."""
        searched = prior_knowledge(route)
        refs = self.accounts.existing(accounts_of(payer))
        if searched <= ZERO or not refs:
            return
        if self.leases is not None:
            self.leases.charge(refs, searched)
            self._track(self._written(payer, refs[0].key))
        else:
            self._track(self._charge_now(payer, refs, searched))

    async def _charge_now(self, payer: Payer, refs: list[AccountRef], amount: Decimal) -> None:
        try:
            crossed = await self.accounts.charge(refs, amount)
        except Exception:
            log.exception(
                "could not count a refused request's searches", extra={"request_id": payer.request_id}
            )
            return
        await self._alert(crossed)

    def settle(
        self,
        envelope: ChatEnvelope,
        route: RoutedCall,
        hold_id: str,
        held: list[AccountRef],
        events: list[UsageEvent] | None,
    ) -> None:
        """Settle a chat call's hold to what it billed (and the knowledge lines before it)."""
        amount = sum((e.total() for e in events or ()), ZERO) + prior_knowledge(route)
        self.settle_amount(Payer.of(envelope, route), hold_id, held, amount)

    def settle_amount(self, payer: Payer, hold_id: str, held: list[AccountRef], amount: Decimal) -> None:
        """Settle (or, with nothing billed, release) in the background: the hold stays counted
        until then, so settling late is never an overrun."""
        if not held:
            return  # no account existed when the call started: nothing to count it on
        if self.leases is not None:
            self.leases.settle(held, hold_id, amount)  # counted now; written with the next write
            self._track(self._written(payer, held[0].key))
        else:
            self._track(self._settle(payer, hold_id, held, amount))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _written(self, payer: Payer, key: str) -> None:
        assert self.leases is not None
        try:
            await self.leases.flushed(key)
        except Exception as err:  # written by a later write; the slice expires if none comes
            log.warning("spend not written yet", extra={"request_id": payer.request_id, "error": repr(err)})

    async def _settle(self, payer: Payer, hold_id: str, held: list[AccountRef], amount: Decimal) -> None:
        try:
            if amount == ZERO:
                await self.accounts.release(held, hold_id)
                return
            crossed = await self.accounts.settle(held, hold_id, amount)
        except Exception:
            # The hold expires on its own; the spend is in the usage stream and ClickHouse.
            log.exception("could not settle a request's spend", extra={"request_id": payer.request_id})
            return
        await self._alert(crossed)

    async def _alert(self, crossed: Crossed) -> None:
        """Publish the budget thresholds a write crossed (`SpendAlert`, once per threshold)."""
        now = time.time()
        for ref, period, threshold, account in crossed:
            alert = SpendAlert(
                tenant=ref.tenant,
                scope=ref.scope,
                account=ref.id,
                period=period,
                period_id=period_id(period, now),
                threshold=threshold,
                budget=account.budgets[period],
                spent=account.spent_in(period, now),
                at=datetime.now(UTC),
            )
            msg_id = f"{ref.key}:{ref.name}:{alert.period_id}:{threshold}"
            await publish_spend_event(
                self.js,
                subjects.spend_alert_subject(ref.tenant),
                alert.model_dump_json().encode(),
                msg_id,
            )

    async def close(self, within: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=within)
        if self.leases is not None:
            try:
                await asyncio.wait_for(self.leases.close(), within)
            except Exception as err:  # they expire on their own
                log.warning("spend slices not given back", extra={"error": repr(err)})
        await self.accounts.stop()
