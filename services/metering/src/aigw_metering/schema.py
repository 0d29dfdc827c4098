"""The usage tables, created and migrated by the service itself at start.

Migrations are the numbered SQL files in `migrations/`, applied in order once each and recorded in
`<db>.schema_migrations`. Every statement is idempotent (`IF NOT EXISTS`), so two replicas
migrating at the same moment, or a crash between a statement and its record, do no harm. A file,
once released, is never edited: a change is a new file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

USAGE_TABLE = "usage_lines"
MIGRATIONS_TABLE = "schema_migrations"
REQUESTS_TABLE = "request_log"  # one row per request the edge answered (requestlog.py)

EVENTS_TABLE = "usage_events_in"  # Null engine: the consumer inserts here, a view writes usage_lines

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, database: str) -> list[str]:
        """The file's statements for `database` (`{db}` in the file), split on `;` at line ends."""
        text = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        parts = re.split(r";\s*(?:\n|$)", text.replace("{db}", database))
        return [p.strip() for p in parts if p.strip()]


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda mig: mig.version)


def migrate(client: Any, database: str) -> list[int]:
    """Bring `database` up to the newest schema through a clickhouse-connect client; returns the
    versions applied now (empty when it was current)."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.{MIGRATIONS_TABLE} "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {database}.{MIGRATIONS_TABLE}").result_rows}
    applied = []
    for mig in migrations():
        if mig.version in done:
            continue
        for statement in mig.statements(database):
            client.command(statement)
        client.insert(
            f"{database}.{MIGRATIONS_TABLE}", [[mig.version, mig.name]], column_names=["version", "name"]
        )
        applied.append(mig.version)
    return applied
