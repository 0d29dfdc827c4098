"""Spend control: prepaid balances, budgets per period, and the holds that keep concurrent requests
from overrunning them.

One document per tenant in the JetStream key-value bucket `SPEND_BUCKET` (`tenant.<id>`, the id
base64url-encoded as in the config bucket), holding the tenant's accounts: its own, and those of its
API keys and gateways that have a budget (`TenantSpend`). An account holds its limits (budgets per
period; the tenant's credited balance once it has one) and its counters: what was spent per period
and in all, and the *holds* of requests in flight. Every change is one compare-and-set write of the
whole document (`aigw_runtime.spend`), so two replicas never both spend the last cent, and what
one request does to its tenant's, key's and gateway's accounts is one write.

Reserve, then settle: before its upstream call a request holds the most it can cost on every
account it touches (tenant, key, gateway: those that exist); the hold counts against every limit
as if spent. After the call the request settles to the exact lines it billed (the same lines its
usage event and ClickHouse carry): the hold is turned into spend, once — a settlement whose hold is
gone (already settled) counts nothing, so one that arrives twice counts once, and a document holds
only the requests in flight, never a history that grows with traffic. A hold expires on its own
(`expires`), so a worker that dies mid-request frees its hold without anyone's help. Periods are
UTC calendar days and months.

No I/O here: the arithmetic on one document, pure, so it is tested without a server.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

SPEND_BUCKET: Final = "aigw_spend"
SPEND_STORAGE: Final = "file"  # JetStream StorageType: balances survive a NATS restart
SPEND_HISTORY: Final = 1  # the documents are counters; the credits' audit trail is the stream

Scope = Literal["tenant", "key", "gateway"]
Period = Literal["day", "month"]
PERIODS: Final[tuple[Period, ...]] = ("day", "month")
ALERT_THRESHOLDS: Final = (50, 80, 100)  # percent of a budget; each alerts once per period
RECENT_CREDITS: Final = 20  # credits kept on the tenant's document for `aigw balance`

ZERO: Final = Decimal(0)


def period_id(period: Period, now: float) -> str:
    """The UTC day (`2026-12-02`) or month (`2026-12`) `now` falls in."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def spend_key(scope: Scope, account_id: str) -> str:
    encoded = base64.urlsafe_b64encode(account_id.encode()).decode().rstrip("=")
    return f"{scope}.{encoded}"


class Credit(BaseModel):
    """An operator's credit of a tenant's balance: the audit event (`subjects.spend_credit_subject`)
    and its copy among the tenant's recent credits."""

    id: str
    tenant: str
    amount: Decimal
    note: str = ""
    by_key: str  # the operator key's id
    at: datetime


class SpendAlert(BaseModel):
    """Published on `subjects.spend_alert_subject(tenant)` when settled spend first reaches 50, 80
    or 100 % of a budget in its period."""

    tenant: str
    scope: Scope
    account: str  # the tenant, key or gateway id
    period: Period
    period_id: str
    threshold: int  # percent
    budget: Decimal
    spent: Decimal
    at: datetime


class BudgetSet(BaseModel):
    """A budget set or removed (`budget` None), published on `subjects.spend_budget_subject(tenant)`
    (kept by the spend stream; metering stores them for the spend-against-budget dashboard)."""

    id: str
    tenant: str
    scope: Scope
    account: str  # the tenant, key or gateway id
    period: Period
    budget: Decimal | None
    by_key: str
    at: datetime


class Shortfall(Exception):
    """A hold that does not fit: which limit, what it allows and what was asked."""

    def __init__(self, limit: str, remaining: Decimal, asked: Decimal) -> None:
        super().__init__(limit)
        self.limit, self.remaining, self.asked = limit, remaining, asked


class Account(BaseModel):
    """One account's limits and counters (the value of its key in `SPEND_BUCKET`)."""

    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    budgets: dict[Period, Decimal] = Field(default_factory=dict)  # USD per period
    prepaid: bool = False  # tenants: refused once the balance cannot pay (set by the first credit)
    credited: Decimal = ZERO  # all credits ever (balance = credited - spent_total)
    spent_total: Decimal = ZERO
    spent: dict[Period, tuple[str, Decimal]] = Field(default_factory=dict)  # period -> (id, amount)
    held: dict[str, tuple[Decimal, float]] = Field(default_factory=dict)  # hold id -> (amount, expires)
    alerted: dict[Period, tuple[str, int]] = Field(default_factory=dict)  # period -> (id, percent)
    credits: list[Credit] = Field(default_factory=list)

    # ------------------------------------------------------------------ reading
    def spent_in(self, period: Period, now: float) -> Decimal:
        current = self.spent.get(period)
        return current[1] if current is not None and current[0] == period_id(period, now) else ZERO

    def reserved(self, now: float) -> Decimal:
        return sum((amount for amount, expires in self.held.values() if expires > now), ZERO)

    @property
    def balance(self) -> Decimal:
        return self.credited - self.spent_total

    def remaining(self, now: float) -> dict[str, Decimal]:
        """What each limit still allows, holds counted as spent (negative once overspent)."""
        reserved = self.reserved(now)
        left: dict[str, Decimal] = {}
        if self.prepaid:
            left["balance"] = self.balance - reserved
        for period, budget in self.budgets.items():
            left[f"{period} budget"] = budget - self.spent_in(period, now) - reserved
        return left

    # ------------------------------------------------------------------ changing
    def prune(self, now: float) -> None:
        self.held = {k: v for k, v in self.held.items() if v[1] > now}

    def check(self, amount: Decimal, now: float) -> None:
        """Raise `Shortfall` if holding `amount` more would exceed a limit (changes nothing)."""
        for limit, left in self.remaining(now).items():
            if amount > left:
                raise Shortfall(limit, max(left, ZERO), amount)

    def hold(self, hold_id: str, amount: Decimal, expires: float, now: float) -> None:
        """Hold `amount` for a request, or raise `Shortfall` (the document is then unchanged)."""
        self.check(amount, now)
        self.prune(now)
        self.held[hold_id] = (amount, expires)

    def release(self, hold_id: str, now: float) -> None:
        self.prune(now)
        self.held.pop(hold_id, None)

    def settle(self, hold_id: str, amount: Decimal, now: float) -> bool:
        """Turn the hold into `amount` spent (False, nothing counted: no such hold, so this
        settlement arrived before, or the hold expired because its request outlived its deadline
        and grace; ClickHouse still has those lines)."""
        self.prune(now)
        if self.held.pop(hold_id, None) is None:
            return False
        self.add_spent(amount, now)
        return True

    def add_spent(self, amount: Decimal, now: float) -> None:
        """Count `amount` as spent now (in all, and in the current day and month)."""
        self.spent_total += amount
        for period in PERIODS:
            self.spent[period] = (period_id(period, now), self.spent_in(period, now) + amount)

    def tightest(self, now: float) -> tuple[str, Decimal] | None:
        """The limit with the least left (holds counted as spent), or None: no limit at all."""
        left = self.remaining(now)
        return min(left.items(), key=lambda item: item[1]) if left else None

    def crossed(self, now: float) -> list[tuple[Period, int]]:
        """Budget thresholds reached for the first time in their period (marked as alerted)."""
        out: list[tuple[Period, int]] = []
        for period, budget in self.budgets.items():
            if budget <= 0:
                continue
            pid = period_id(period, now)
            last = self.alerted.get(period)
            before = last[1] if last is not None and last[0] == pid else 0
            percent = self.spent_in(period, now) * 100 / budget
            reached = [t for t in ALERT_THRESHOLDS if t > before and percent >= t]
            if reached:
                out.extend((period, t) for t in reached)
                self.alerted[period] = (pid, reached[-1])
        return out

    def credit(self, credit: Credit) -> None:
        self.prepaid = True
        self.credited += credit.amount
        self.credits = [*self.credits, credit][-RECENT_CREDITS:]


def account_name(scope: Scope, account_id: str) -> str:
    """An account's name in its tenant's document: `tenant`, `key:<id>`, `gateway:<id>`."""
    return "tenant" if scope == "tenant" else f"{scope}:{account_id}"


class TenantSpend(BaseModel):
    """The value of a tenant's key in `SPEND_BUCKET`: its accounts by `account_name`."""

    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    accounts: dict[str, Account] = Field(default_factory=dict)


# ---------------------------------------------------------------------- management API
class BudgetIn(BaseModel):
    """`PUT /v1/spend/budgets/{scope}/{id}`: the budgets to set (null removes one)."""

    model_config = ConfigDict(extra="forbid")

    day: Decimal | None = Field(default=None, ge=0, max_digits=30, decimal_places=12)
    month: Decimal | None = Field(default=None, ge=0, max_digits=30, decimal_places=12)


class CreditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Decimal = Field(gt=0, max_digits=30, decimal_places=12)
    note: str = Field(default="", max_length=500)


class PeriodView(BaseModel):
    period: Period
    period_id: str
    budget: Decimal | None
    spent: Decimal
    remaining: Decimal | None  # budget - spent - reserved


class AccountView(BaseModel):
    """What `aigw balance` and `aigw budget show` print, and the usage API's `spend`."""

    object: Literal["spend.account"] = "spend.account"
    scope: Scope
    id: str
    prepaid: bool
    balance: Decimal | None  # prepaid tenants: credited - spent
    credited: Decimal
    spent_total: Decimal
    reserved: Decimal
    available: Decimal | None  # balance - reserved
    periods: list[PeriodView]
    credits: list[Credit] = Field(default_factory=list)

    @classmethod
    def of(cls, scope: Scope, account_id: str, account: Account, now: float) -> AccountView:
        reserved = account.reserved(now)
        periods = []
        for period in PERIODS:
            spent = account.spent_in(period, now)
            budget = account.budgets.get(period)
            periods.append(
                PeriodView(
                    period=period,
                    period_id=period_id(period, now),
                    budget=budget,
                    spent=spent,
                    remaining=None if budget is None else budget - spent - reserved,
                )
            )
        return cls(
            scope=scope,
            id=account_id,
            prepaid=account.prepaid,
            balance=account.balance if account.prepaid else None,
            credited=account.credited,
            spent_total=account.spent_total,
            reserved=reserved,
            available=account.balance - reserved if account.prepaid else None,
            periods=periods,
            credits=list(reversed(account.credits)),
        )
