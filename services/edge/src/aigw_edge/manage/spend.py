"""`/v1/spend`: a tenant's prepaid balance (operators credit it) and spend budgets per day and month
for a tenant, an API key or a gateway.

The accounts live in the spend bucket (`aigw_contracts.spend`); workers hold and settle against
them on every request. Each credit is written to the tenant's account with compare-and-set and
published to the spend stream (`subjects.spend_credit_subject`), the audit trail other teams
consume. Admin keys read their own tenant's accounts and set its budgets; only operator keys
credit a balance.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from aigw_contracts import ApiKey, errors, subjects
from aigw_contracts.spend import Account, AccountView, BudgetIn, BudgetSet, Credit, CreditIn, Scope
from aigw_runtime.spend import AccountRef, SpendAccounts, publish_spend_event

from ..deps import AdminKey, OperatorKey
from ..openapi import errors as openapi_errors
from .access import not_found, target_tenant
from .store import Config, ManagedConfig

router = APIRouter(prefix="/v1/spend", tags=["spend"], responses=openapi_errors(400, 401, 403, 404, 503))


async def spend_accounts(request: Request) -> SpendAccounts:
    accounts: SpendAccounts | None = getattr(request.app.state, "spend", None)
    if accounts is None:
        raise errors.Unavailable("Spend accounts are not available yet; retry shortly")
    return accounts


Accounts = Annotated[SpendAccounts, Depends(spend_accounts)]


def _owner(key: ApiKey, scope: Scope, account_id: str, config: ManagedConfig) -> str:
    """The tenant an account belongs to, if `key` may see it (404 otherwise, as for anything else)."""
    if scope == "tenant":
        return target_tenant(key, account_id, config)
    entry = config.view.keys.get(account_id) if scope == "key" else config.view.gateways.get(account_id)
    if entry is None or not (key.operator or entry.tenant == key.tenant):
        raise not_found(scope, account_id, "id")
    return entry.tenant


async def _view(accounts: SpendAccounts, scope: Scope, account_id: str, tenant: str) -> AccountView:
    account, _ = await accounts.read(AccountRef(scope, account_id, tenant))
    return AccountView.of(scope, account_id, account, time.time())


@router.get("/balance", summary="A tenant's balance, spend in the day and month, reserved and remaining")
async def balance(
    key: AdminKey, config: Config, accounts: Accounts, tenant: str | None = Query(default=None)
) -> AccountView:
    whose = target_tenant(key, tenant, config)
    return await _view(accounts, "tenant", whose, whose)


@router.post("/balance/credit", summary="Credit a tenant's prepaid balance (operators)")
async def credit(
    body: CreditIn,
    key: OperatorKey,
    config: Config,
    accounts: Accounts,
    request: Request,
    tenant: str | None = Query(default=None),
) -> AccountView:
    whose = target_tenant(key, tenant, config)
    entry = Credit(
        id=f"credit_{uuid.uuid4().hex}",
        tenant=whose,
        amount=body.amount,
        note=body.note,
        by_key=key.id,
        at=datetime.now(UTC),
    )

    def apply(account: Account, now: float) -> None:
        account.credit(entry)

    ref = AccountRef("tenant", whose, whose)
    await accounts.change(ref, apply)
    js = request.app.state.bus.nc.jetstream()
    await publish_spend_event(
        js, subjects.spend_credit_subject(whose), entry.model_dump_json().encode(), entry.id
    )
    return await _view(accounts, "tenant", whose, whose)


@router.get("/budgets/{scope}/{account_id}", summary="A budget's spend, reserved amount and what remains")
async def show_budget(
    scope: Scope, account_id: str, key: AdminKey, config: Config, accounts: Accounts
) -> AccountView:
    return await _view(accounts, scope, account_id, _owner(key, scope, account_id, config))


@router.put(
    "/budgets/{scope}/{account_id}",
    summary="Set day and/or month budgets in USD (null removes one; a field left out is kept)",
)
async def set_budget(
    scope: Scope,
    account_id: str,
    body: BudgetIn,
    key: AdminKey,
    config: Config,
    accounts: Accounts,
    request: Request,
) -> AccountView:
    tenant = _owner(key, scope, account_id, config)

    def apply(account: Account, now: float) -> None:
        for period in body.model_fields_set:  # fields left out stay as they are
            value = getattr(body, period)
            if value is None:
                account.budgets.pop(period, None)  # type: ignore[call-overload]
            else:
                account.budgets[period] = value  # type: ignore[index]

    await accounts.change(AccountRef(scope, account_id, tenant), apply)
    js = request.app.state.bus.nc.jetstream()
    for period in sorted(body.model_fields_set):  # for dashboards: spend against budgets
        event = BudgetSet(
            id=f"budget_{uuid.uuid4().hex}",
            tenant=tenant,
            scope=scope,
            account=account_id,
            period=period,
            budget=getattr(body, period),
            by_key=key.id,
            at=datetime.now(UTC),
        )
        await publish_spend_event(
            js, subjects.spend_budget_subject(tenant), event.model_dump_json().encode(), event.id
        )
    return await _view(accounts, scope, account_id, tenant)
