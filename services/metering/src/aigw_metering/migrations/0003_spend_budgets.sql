-- Budgets as set through the spend API (`BudgetSet` events of the AIGW_SPEND stream): what the
-- dashboards draw spend against. One row per change; the latest per account and period wins
-- (ReplacingMergeTree on `at`, read with FINAL); `removed` marks a budget taken away. The same
-- event delivered twice has the same key and version: one row survives.
CREATE TABLE IF NOT EXISTS {db}.spend_budgets
(
    tenant   LowCardinality(String),
    scope    LowCardinality(String) COMMENT 'tenant, key or gateway',
    account  String COMMENT 'the tenant, key or gateway id',
    period   LowCardinality(String) COMMENT 'day or month (UTC)',
    budget   Decimal(38, 18),
    removed  Bool,
    at       DateTime64(6, 'UTC'),
    event_id String
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (tenant, scope, account, period);
