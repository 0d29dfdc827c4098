-- One row per usage line: one SKU of one request, priced by one producer (UsageEvent.source).
--
-- Money is Decimal(38, 18): 18 fractional digits hold per-token prices such as 2.5e-8 exactly
-- (and any amount = unit_price × quantity of them), 20 integer digits hold any realistic sum;
-- sum() over it stays Decimal(38, 18), exact. Events with more digits are refused (dead letter).
--
-- Duplicates: JetStream delivers at least once, and a producer may republish after the stream's
-- duplicate window. The sorting key ends with (request_id, source) and starts with columns that are
-- fixed per event, so (tenant, sku, hour, request_id, source) identifies a line: a second copy of a
-- line has the same key, and ReplacingMergeTree keeps one of them when parts merge. Merges happen
-- when they happen, so every billing read uses FINAL (see queries.py and the dashboards). The
-- consumer also avoids writing most copies at all (see consumer.py).
--
-- Order: filter columns first, low to high cardinality (tenant, sku, hour), then the request.
-- Partitions by month: copies of a line share ts, so they always meet in the same partition.
CREATE TABLE IF NOT EXISTS {db}.usage_lines
(
    tenant         LowCardinality(String),
    sku            LowCardinality(String),
    ts             DateTime64(6, 'UTC') COMMENT 'billing time: the event''s finished_at',
    request_id     String,
    source         LowCardinality(String) COMMENT 'producer: inference, routing, retrieval',
    line_no        UInt16 COMMENT 'position in the event; line 0 carries the request''s latency for dashboards',
    quantity       Int64,
    unit_price     Decimal(38, 18),
    amount         Decimal(38, 18) COMMENT 'unit_price × quantity, exactly',
    description    String,
    key_id         String,
    gateway_id     LowCardinality(String) COMMENT 'empty for a model called directly',
    upstream       LowCardinality(String),
    upstream_kind  LowCardinality(String),
    model          LowCardinality(String),
    status         LowCardinality(String),
    started_at     DateTime64(6, 'UTC'),
    latency_ms     Nullable(Float64),
    ttft_ms        Nullable(Float64),
    metadata       Map(String, String),
    schema_version UInt8,
    stream_seq     UInt64 COMMENT 'sequence in the usage stream (traceability)',
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX request_id_bloom request_id TYPE bloom_filter(0.001) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, sku, toStartOfHour(ts), request_id, source)
-- Lets insert_deduplication_token drop a retried insert that had in fact succeeded.
SETTINGS non_replicated_deduplication_window = 10000;

-- The consumer inserts events, not lines: validated events in the contract's canonical JSON (as
-- published when they already are, else re-serialized through the model, see rows.py), as
-- JSONEachRow into this Null table; the view below turns each into one usage_lines row per line. Parsing JSON and building rows in ClickHouse
-- (C++, outside Python's GIL) instead of in Python is what lets one process store ≥ 50,000
-- lines/s. A Null table stores nothing; dedup tokens apply to the view's target
-- (deduplicate_blocks_in_dependent_materialized_views on the insert).
CREATE TABLE IF NOT EXISTS {db}.usage_events_in
(
    stream_seq     UInt64,
    schema_version UInt8,
    request_id     String,
    source         String,
    tenant         String,
    key_id         String,
    gateway_id     Nullable(String),
    upstream       String,
    upstream_kind  String,
    model          String,
    lines          Array(Tuple(sku String, amount Decimal(38, 18), unit_price Decimal(38, 18), quantity Int64, description String)),
    metadata       Map(String, String),
    status         String,
    started_at     DateTime64(6, 'UTC'),
    finished_at    DateTime64(6, 'UTC'),
    latency_ms     Nullable(Float64),
    ttft_ms        Nullable(Float64)
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_lines_from_events TO {db}.usage_lines AS
SELECT
    tenant,
    line.sku AS sku,
    finished_at AS ts,
    request_id,
    source,
    toUInt16(line_index - 1) AS line_no,
    line.quantity AS quantity,
    line.unit_price AS unit_price,
    line.amount AS amount,
    line.description AS description,
    key_id,
    ifNull(gateway_id, '') AS gateway_id,
    upstream,
    upstream_kind,
    model,
    status,
    started_at,
    latency_ms,
    ttft_ms,
    metadata,
    schema_version,
    stream_seq
FROM {db}.usage_events_in
ARRAY JOIN lines AS line, arrayEnumerate(lines) AS line_index;
