-- One row per HTTP request the edge answered (aigw_contracts.requestlog.RequestLogEvent): refusals,
-- failures and successes alike. Tokens and cost stay in usage_lines (joined on request_id).
--
-- Duplicates: the edge publishes with Nats-Msg-Id = the request id and JetStream delivers at least
-- once, so a copy can still arrive (a redelivery after a crash between insert and ack). Every
-- column of the sorting key is fixed per request, so a copy has the same key and
-- ReplacingMergeTree keeps one; reads use FINAL. Partitions by day: the log is read by time range,
-- and a TTL drops old days whole.
CREATE TABLE IF NOT EXISTS {db}.request_log
(
    ts               DateTime64(6, 'UTC') COMMENT 'when the request arrived (started_at)',
    tenant           LowCardinality(String) COMMENT 'empty when refused before a key said whose',
    request_id       String,
    key_id           String,
    edge_id          LowCardinality(String),
    method           LowCardinality(String),
    path             LowCardinality(String),
    status           UInt16,
    error_code       LowCardinality(String),
    model            LowCardinality(String),
    gateway          LowCardinality(String) COMMENT 'slug of the gateway that answered',
    gateway_id       LowCardinality(String) COMMENT 'its id, as usage_lines.gateway_id',
    fallback         LowCardinality(String) COMMENT 'the fallback upstream that answered, if one did',
    stream           Bool,
    latency_ms       Float64,
    ttft_ms          Nullable(Float64),
    request_payload  Nullable(String) CODEC(ZSTD(3)),
    response_payload Nullable(String) CODEC(ZSTD(3)),
    schema_version   UInt8,
    stream_seq       UInt64 COMMENT 'sequence in the request log stream',
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX request_id_bloom request_id TYPE bloom_filter(0.001) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (tenant, toStartOfHour(ts), request_id)
TTL toDateTime(ts) + INTERVAL 90 DAY DELETE
SETTINGS non_replicated_deduplication_window = 10000;
