"""JetStream stream definitions, as plain values: one definition for every service that creates them.

Both the inference worker and the metering service create the usage stream when it is missing (so
neither depends on the other's start order), and must create it identically. Kept free of nats
imports so any client library can build its config from these values.

The usage stream holds billing data, so it refuses new messages when a limit is hit (`discard=new`:
a publisher sees the error and retries) instead of silently dropping the oldest ones, and its
duplicate window is what makes `Nats-Msg-Id` deduplicate a republished usage event.
"""

from __future__ import annotations

from typing import Final

from . import subjects

USAGE_STREAM: Final = subjects.USAGE_STREAM
USAGE_SUBJECTS: Final = (subjects.USAGE_WILDCARD,)
USAGE_STORAGE: Final = "file"  # JetStream StorageType
USAGE_DISCARD: Final = "new"  # JetStream DiscardPolicy
USAGE_DUPLICATE_WINDOW_S: Final = 120.0  # seconds; a republish inside it is dropped by Nats-Msg-Id
USAGE_MAX_AGE_S: Final = 30 * 24 * 3600.0  # seconds; consumers have a month to catch up

# Dead letters of the usage stream: events metering cannot store (malformed), with the reason in
# headers (see usage.DEAD_REASON). Created by metering; kept longer than the usage stream so a
# fixed producer's events can still be replayed.
USAGE_DEAD_STREAM: Final = "AIGW_USAGE_DEAD"
USAGE_DEAD_SUBJECTS: Final = (subjects.USAGE_DEAD_LETTER,)
USAGE_DEAD_MAX_AGE_S: Final = 90 * 24 * 3600.0

# The request log (`requestlog.RequestLogEvent`, one per request the edge answered): created by the
# edges and by metering alike, deduplicated by `Nats-Msg-Id` (the request id) like usage, kept a
# week for consumers to catch up (ClickHouse keeps the rows).
REQUESTS_STREAM: Final = subjects.REQUESTS_STREAM
REQUESTS_SUBJECTS: Final = (subjects.REQUESTS_WILDCARD,)
REQUESTS_MAX_AGE_S: Final = 7 * 24 * 3600.0

# Answers kept for repeated calls with one `idempotency_key` (a JetStream key-value bucket, written
# by the edges: `aigw_edge.idempotency`). Entries expire after the edges' idempotency window (the
# bucket's TTL); one version per key is enough, since each is replaced at most twice (pending, done).
IDEMPOTENCY_BUCKET: Final = "aigw_idempotency"
IDEMPOTENCY_STORAGE: Final = "file"  # JetStream StorageType: a kept answer survives a NATS restart
IDEMPOTENCY_WINDOW_S: Final = 24 * 3600.0  # seconds; the default of the edges' setting

# Spend control's events (`aigw_contracts.spend`): balance credits (the audit trail of every credit)
# and budget alerts, for other teams' durable consumers. Refuses rather than drops (`discard=new`).
SPEND_STREAM: Final = subjects.SPEND_STREAM
SPEND_SUBJECTS: Final = (subjects.SPEND_WILDCARD,)
SPEND_MAX_AGE_S: Final = 400 * 24 * 3600.0  # a year and a month of credits and alerts
# Responses kept for `previous_response_id` (`POST /v1/responses` with `store` not false), written
# by the edges: `aigw_edge.responsestore`. Keyed by tenant and response id; entries expire after the
# edges' `AIGW_RESPONSES_RETENTION` (the bucket's TTL).
RESPONSES_BUCKET: Final = "aigw_responses"
RESPONSES_STORAGE: Final = "file"
RESPONSES_RETENTION_S: Final = 30 * 24 * 3600.0

# Gateways' response caches (`Gateway.cache`), written by the edges: `aigw_edge.respcache`. Each
# entry holds its own expiry (the gateway's TTL); the bucket's TTL is the longest a gateway may set.
CACHE_BUCKET: Final = "aigw_response_cache"
CACHE_STORAGE: Final = "file"
CACHE_MAX_TTL_S: Final = 30 * 24 * 3600.0

# Circuit breakers' states, as each inference worker sees them (`aigw_worker.circuits`): a JetStream
# key-value bucket the workers write (key `<worker>.<upstream>.<deployment>`, base64url-encoded
# parts) and the edge reads for `GET /v1/circuits`. Only circuits that are not closed have an entry
# (a circuit that closes deletes its own); entries of a worker that died expire with the bucket's TTL.
CIRCUITS_BUCKET: Final = "aigw_circuits"
CIRCUITS_STORAGE: Final = "memory"  # JetStream StorageType: a view of live state, not a record
CIRCUITS_TTL_S: Final = 600.0
