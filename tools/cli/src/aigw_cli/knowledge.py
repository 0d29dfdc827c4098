"""`aigw collection|doc|search …`: knowledge collections, their documents, and direct search.

`aigw doc import FILE.jsonl` sends the file in batches (a NATS message holds at most 1 MiB, and a
batch is embedded before it is answered), prints progress after each batch and a summary at the
end. Resuming an interrupted import is running the same command again: documents already stored
unchanged cost a hash lookup and no embedding.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .client import Api, CliError
from .resources import _json_arg, _table
from .table import render, render_fields

# A batch is embedded before the server answers: the bundled local model reads a few thousand
# tokens per second per core, so keep a batch well under a minute of work.
BATCH_LINES = 100
BATCH_BYTES = 256 * 1024
WRITE_TIMEOUT = 330.0  # a little over the edge's own wait for the retrieval service

CONTENT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
REPORT_FIELDS = (
    "total",
    "created",
    "updated",
    "metadata_only",
    "unchanged",
    "failed",
    "chunks",
    "embedding_tokens",
)
_LINE = re.compile(r"^line (\d+):")


# ---------------------------------------------------------------------- rendering
def render_report(report: dict[str, Any]) -> str:
    out = [f"{name:>16}: {report.get(name, 0)}" for name in REPORT_FIELDS]
    out += [f"{'error':>16}: {e}" for e in report.get("errors", [])]
    return "\n".join(out)


def render_documents(result: Any) -> str:
    if isinstance(result, dict) and result.get("object") == "list":
        rows = [{**d, "tags": ",".join(d.get("__tags", [])), "ref": d.get("__ref")} for d in result["data"]]
        return render(rows, ["docid", "title", "chunks", "ref", "tags"]) if rows else "(none)"
    if isinstance(result, dict) and result.get("deleted"):
        return f"deleted document {result['docid']}"
    return render_fields(result, width=8)


def _snippet(text: str, width: int = 72) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render_search(result: dict[str, Any]) -> str:
    passages = result.get("passages", [])
    if not passages:
        return "(no passage scored above minScore)"
    rows = [
        {"rank": i, "score": p["score"], "id": p["id"], "title": p.get("title"), "text": _snippet(p["text"])}
        for i, p in enumerate(passages, start=1)
    ]
    return render(rows, ["rank", "score", "id", "title", "text"])


# ---------------------------------------------------------------------- documents
def _document(args: argparse.Namespace) -> dict[str, Any]:
    if (args.file is None) == (args.text is None):
        raise CliError("give the document as --file PATH or --text TEXT (one of them)")
    content_type = args.content_type
    if args.file is not None:
        path: Path = args.file
        if not path.is_file():
            raise CliError(f"no such file: {path}")
        content_type = content_type or CONTENT_TYPES.get(path.suffix.lower(), "text/plain")
        data = path.read_bytes()
        text = base64.b64encode(data).decode() if content_type == "application/pdf" else data.decode("utf-8")
        docid = args.docid or path.name
    else:
        text, docid = args.text, args.docid
        if not docid:
            raise CliError("--docid is required with --text")
    doc: dict[str, Any] = {"docid": docid, "text": text, "content_type": content_type or "text/plain"}
    if args.title:
        doc["title"] = args.title
    if args.ref:
        doc["__ref"] = args.ref
    if args.tags:
        doc["__tags"] = [t.strip() for t in args.tags.split(",") if t.strip()]
    if args.meta:
        doc["__meta"] = _json_arg(args.meta, "--meta")
    return doc


def batches(path: Path, max_lines: int, max_bytes: int) -> Iterator[tuple[list[int], list[str]]]:
    """(file line numbers, the non-empty lines) of each batch: at most `max_lines` lines and about
    `max_bytes` bytes (a longer single line travels alone)."""
    numbers: list[int] = []
    batch: list[str] = []
    size = 0
    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            encoded = len(line.encode()) + 1
            if batch and (len(batch) >= max_lines or size + encoded > max_bytes):
                yield numbers, batch
                numbers, batch, size = [], [], 0
            numbers.append(number)
            batch.append(line)
            size += encoded
    if batch:
        yield numbers, batch


def import_jsonl(api: Api, args: argparse.Namespace) -> dict[str, Any]:
    path: Path = args.file
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    with path.open(encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    summary: dict[str, Any] = {name: 0 for name in REPORT_FIELDS}
    summary["errors"] = []
    done = 0
    for numbers, lines in batches(path, args.batch_lines, args.batch_bytes):
        try:
            report = api.request(
                "POST",
                f"/collections/{args.collection}/documents:import",
                content="\n".join(lines).encode(),
                headers={"content-type": "application/x-ndjson"},
                timeout=WRITE_TIMEOUT,
            )
        except CliError as err:
            raise CliError(
                f"{err}\nimport stopped at line {numbers[0]} ({done}/{total} documents sent); run the same "
                "command again to resume: documents already stored unchanged are skipped"
            ) from None
        for name in REPORT_FIELDS:
            summary[name] += report.get(name, 0)
        summary["errors"] += [_renumber(e, numbers) for e in report.get("errors", [])]
        done += len(lines)
        print(
            f"imported {done}/{total} documents… ({report.get('created', 0)} new, {report.get('updated', 0)} "
            f"updated, {report.get('unchanged', 0)} unchanged, {report.get('failed', 0)} failed)",
            file=sys.stderr,
            flush=True,
        )
    return summary


def _renumber(error: str, numbers: list[int]) -> str:
    """The server numbers lines within a batch (1-based, the lines it got): say the file's line."""
    match = _LINE.match(error)
    if not match or not 0 < int(match.group(1)) <= len(numbers):
        return error
    return f"line {numbers[int(match.group(1)) - 1]}:{error[match.end() :]}"


# ---------------------------------------------------------------------- commands
def register(commands: Any) -> None:
    cs = commands.add_parser("collection", help="manage knowledge collections").add_subparsers(
        dest="action", required=True
    )
    p = cs.add_parser("create", help="create a collection")
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    p.add_argument("--tenant", help="operators: create for another tenant")
    p.set_defaults(
        run=lambda api, a: api.request(
            "POST",
            "/collections",
            json={
                k: v for k, v in (("name", a.name), ("description", a.description), ("tenant", a.tenant)) if v
            },
        )
    )
    p = cs.add_parser("list", help="list your collections")
    p.add_argument("--tenant")
    p.set_defaults(
        run=lambda api, a: api.request("GET", "/collections", params={"tenant": a.tenant} if a.tenant else {})
    )
    p = cs.add_parser("show", help="show one collection")
    p.add_argument("ref", help="id or name")
    p.set_defaults(run=lambda api, a: api.request("GET", f"/collections/{a.ref}"))
    p = cs.add_parser("delete", help="delete an unused collection and its documents")
    p.add_argument("ref")
    p.set_defaults(run=lambda api, a: api.request("DELETE", f"/collections/{a.ref}", timeout=WRITE_TIMEOUT))
    for sub in cs.choices.values():
        sub.set_defaults(render=_table(["id", "name", "description", "gateways"]))

    ds = commands.add_parser("doc", help="manage the documents of a collection").add_subparsers(
        dest="action", required=True
    )
    p = ds.add_parser("add", help="add or update one document (same docid: replaced)")
    p.add_argument("collection", help="collection id or name")
    p.add_argument("--file", type=Path, help="text, Markdown (.md), HTML (.html) or PDF (.pdf)")
    p.add_argument("--text")
    p.add_argument("--docid", help="default: the file's name")
    p.add_argument("--content-type", choices=("text/plain", "text/markdown", "text/html", "application/pdf"))
    p.add_argument("--title")
    p.add_argument("--ref", help="__ref: groups documents of one source")
    p.add_argument("--tags", help="__tags, comma separated")
    p.add_argument("--meta", help='__meta as JSON, e.g. \'{"url": "https://…"}\' (returned, never embedded)')
    p.set_defaults(
        run=lambda api, a: api.request(
            "POST", f"/collections/{a.collection}/documents", json=_document(a), timeout=WRITE_TIMEOUT
        ),
        render=render_report,
    )
    p = ds.add_parser("import", help="import a JSON Lines file of documents, with progress")
    p.add_argument("collection")
    p.add_argument("file", type=Path)
    p.add_argument("--batch-lines", type=int, default=BATCH_LINES)
    p.add_argument("--batch-bytes", type=int, default=BATCH_BYTES)
    p.set_defaults(run=import_jsonl, render=render_report)
    p = ds.add_parser("list", help="list a collection's documents")
    p.add_argument("collection")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(
        run=lambda api, a: api.request(
            "GET", f"/collections/{a.collection}/documents", params={"offset": a.offset, "limit": a.limit}
        ),
        render=render_documents,
    )
    p = ds.add_parser("show", help="show one document's metadata")
    p.add_argument("collection")
    p.add_argument("docid")
    p.set_defaults(
        run=lambda api, a: api.request("GET", f"/collections/{a.collection}/documents/{a.docid}"),
        render=render_documents,
    )
    p = ds.add_parser("delete", help="delete one document")
    p.add_argument("collection")
    p.add_argument("docid")
    p.set_defaults(
        run=lambda api, a: api.request("DELETE", f"/collections/{a.collection}/documents/{a.docid}"),
        render=render_documents,
    )

    p = commands.add_parser("search", help="search a collection directly")
    p.add_argument("collection")
    p.add_argument("query", nargs="+", help="one or more terms (a ranked union)")
    p.add_argument("--top", type=int)
    p.add_argument("--min-score", type=float)
    p.add_argument("--reranker", choices=("rrf", "lexical", "none"))
    p.add_argument("--include-references", action="store_true")
    p.set_defaults(run=search, render=render_search)


def search(api: Api, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"query": args.query[0] if len(args.query) == 1 else args.query}
    for name, value in (("top", args.top), ("minScore", args.min_score), ("reranker", args.reranker)):
        if value is not None:
            body[name] = value
    if args.include_references:
        body["includeReferences"] = True
    return api.request("POST", f"/collections/{args.collection}/search", json=body)
