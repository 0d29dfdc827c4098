"""The usage store: ClickHouse through clickhouse-connect, a server or chDB in this process.

Both backends are the same client class and the same SQL. What differs, measured here:
* chDB (`chdb://<path>`) has no async client, so every call here is blocking and the service runs
  them in threads (`asyncio.to_thread`), never on the event loop;
* importing chdb costs ≈ 220 MB, so it is imported only when the DSN asks for it;
* one process at a time may open a chDB path (a second fails on the path's lock), so this service
  owns the store and answers usage queries itself (`subjects.METERING_QUERY`).

Two clients: one writes (inserts, migrations), one reads (reports). A clickhouse-connect client is
not meant for concurrent calls (a server session refuses a second query while one runs), and each
holds its own lock, so a long report never waits for an insert or the other way round.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from .schema import EVENTS_TABLE, REQUESTS_TABLE, USAGE_TABLE, migrate

log = logging.getLogger("aigw.metering.store")


_INSERT_SETTINGS = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,  # the token reaches usage_lines
    "date_time_input_format": "best_effort",  # RFC 3339 with "Z"
    "input_format_skip_unknown_fields": 1,  # fields a newer contract adds are ignored, not fatal
}


class StoreUnavailable(Exception):
    """The store cannot take this call now (down, unwritable, locked by another process…)."""


class StoreRefused(StoreUnavailable):
    """ClickHouse refused the data itself (a parse or type error), not the connection."""


# ClickHouse error codes that are about the data sent, not about the server being reachable.
_DATA_ERRORS = frozenset({6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 407})
_CODE = re.compile(r"Code: (\d+)\.")


@dataclass(frozen=True)
class Target:
    """Where the store is: a chDB directory or a ClickHouse server URL, and the database."""

    kind: str  # "chdb" or "http"
    location: str  # chDB path (":memory:" allowed) or the server DSN
    database: str

    @property
    def redacted(self) -> str:
        """For logs: never the password."""
        if self.kind == "chdb":
            return f"chdb://{self.location}"
        url = urlparse(self.location)
        host = url.hostname or ""
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{host}{port}/{self.database}"


def parse_dsn(dsn: str, default_database: str) -> Target:
    """`chdb://<path>` (everything after `chdb://` is the path) or `http(s)://…/<database>`."""
    if dsn.startswith("chdb://"):
        path = dsn[len("chdb://") :].split("?", 1)[0]
        return Target("chdb", path or ":memory:", default_database)
    url = urlparse(dsn)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("the metering DSN must be chdb://<path> or http(s)://host:port[/database]")
    database = unquote(url.path.strip("/").split("/")[0]) or default_database
    return Target("http", dsn, database)


class Store:
    def __init__(self, target: Target, insert_timeout_s: float = 60.0) -> None:
        self.target = target
        self.database = target.database
        self.table = f"{target.database}.{USAGE_TABLE}"
        self.events_table = f"{target.database}.{EVENTS_TABLE}"
        self.requests_table = f"{target.database}.{REQUESTS_TABLE}"
        self._insert_timeout_s = insert_timeout_s
        self._writer: Any = None
        self._reader: Any = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def _client(self) -> Any:
        import clickhouse_connect  # the chDB backend itself is imported only for a chdb:// target

        if self.target.kind == "chdb":
            return clickhouse_connect.get_client(interface="chdb", path=self.target.location)
        scheme = urlparse(self.target.location).scheme
        return clickhouse_connect.get_client(
            dsn=self.target.location,
            interface=scheme,
            database="default",  # ours may not exist yet; every statement names it
            autogenerate_session_id=False,  # no server session: calls are independent
            connect_timeout=5,
            send_receive_timeout=self._insert_timeout_s,
            query_retries=0,  # retries are ours, with backoff and the same dedup token
        )

    def open(self) -> None:
        """Connect both clients and migrate the schema; raises StoreUnavailable."""
        with self._write_lock, self._read_lock:
            if self._writer is not None:
                return
            try:
                writer = self._client()
                try:
                    applied = migrate(writer, self.database)
                    reader = self._client()
                except BaseException:
                    writer.close()
                    raise
            except Exception as err:
                raise StoreUnavailable(_describe(err)) from err
            self._writer, self._reader = writer, reader
        if applied:
            log.info("usage schema migrated", extra={"versions": applied, "store": self.target.redacted})

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            for client in (self._writer, self._reader):
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
            self._writer = self._reader = None

    # ------------------------------------------------------------------ writes
    def insert(self, block: bytes, token: str, table: str | None = None) -> None:
        """Insert one batch of events (JSONEachRow, see `rows.Batch`); ClickHouse's view writes
        their lines. `token` is the batch's insert_deduplication_token: retrying the same batch
        with the same token after an insert that succeeded but whose answer was lost (a server
        timeout) stores it once. `table`: another table than the usage events' (the request log)."""
        with self._write_lock:
            client = self._require(self._writer)
            try:
                client.raw_insert(
                    table or self.events_table,
                    insert_block=block,
                    fmt="JSONEachRow",
                    settings={**_INSERT_SETTINGS, "insert_deduplication_token": token},
                )
            except Exception as err:
                code = _CODE.search(str(err))
                if code and int(code.group(1)) in _DATA_ERRORS:
                    raise StoreRefused(_describe(err)) from err
                raise StoreUnavailable(_describe(err)) from err

    def insert_json(self, table: str, block: bytes) -> None:
        """Insert JSONEachRow rows into another table of the database (budgets)."""
        with self._write_lock:
            client = self._require(self._writer)
            try:
                client.raw_insert(f"{self.database}.{table}", insert_block=block, fmt="JSONEachRow")
            except Exception as err:
                raise StoreUnavailable(_describe(err)) from err

    def stored_events(self, request_ids: Sequence[str]) -> set[tuple[str, str]]:
        """(request_id, source) of the events already stored among these requests."""
        if not request_ids:
            return set()
        with self._write_lock:
            client = self._require(self._writer)
            try:
                result = client.query(
                    f"SELECT DISTINCT request_id, source FROM {self.table} "
                    "WHERE request_id IN {ids:Array(String)}",
                    parameters={"ids": list(request_ids)},
                )
            except Exception as err:
                raise StoreUnavailable(_describe(err)) from err
        return {(r[0], r[1]) for r in result.result_rows}

    def ping(self) -> None:
        with self._write_lock:
            client = self._require(self._writer)
            try:
                client.command(f"EXISTS TABLE {self.table}")
            except Exception as err:
                raise StoreUnavailable(_describe(err)) from err

    # ------------------------------------------------------------------ reads
    def query(self, sql: str, parameters: dict[str, Any], settings: dict[str, Any] | None = None) -> Any:
        """A read on the reader client (reports); returns clickhouse-connect's QueryResult."""
        with self._read_lock:
            client = self._require(self._reader)
            try:
                return client.query(sql, parameters=parameters, settings=settings)
            except Exception as err:
                raise StoreUnavailable(_describe(err)) from err

    def _require(self, client: Any) -> Any:
        if client is None:
            raise StoreUnavailable(f"the usage store at {self.target.redacted} is not open")
        return client


def _describe(err: BaseException) -> str:
    """One line, no secrets: clickhouse-connect messages carry the URL without the password."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]
