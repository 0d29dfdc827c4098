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

# Answers kept for repeated calls with one `idempotency_key` (a JetStream key-value bucket, written
# by the edges: `aigw_edge.idempotency`). Entries expire after the edges' idempotency window (the
# bucket's TTL); one version per key is enough, since each is replaced at most twice (pending, done).
IDEMPOTENCY_BUCKET: Final = "aigw_idempotency"
IDEMPOTENCY_STORAGE: Final = "file"  # JetStream StorageType: a kept answer survives a NATS restart
IDEMPOTENCY_WINDOW_S: Final = 24 * 3600.0  # seconds; the default of the edges' setting

# Circuit breakers' states, as each inference worker sees them (`aigw_worker.circuits`): a JetStream
# key-value bucket the workers write (key `<worker>.<upstream>.<deployment>`, base64url-encoded
# parts) and the edge reads for `GET /v1/circuits`. Only circuits that are not closed have an entry
# (a circuit that closes deletes its own); entries of a worker that died expire with the bucket's TTL.
CIRCUITS_BUCKET: Final = "aigw_circuits"
CIRCUITS_STORAGE: Final = "memory"  # JetStream StorageType: a view of live state, not a record
CIRCUITS_TTL_S: Final = 600.0
