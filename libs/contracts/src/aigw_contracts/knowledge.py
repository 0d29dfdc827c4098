"""Knowledge collections (RAG): documents as users send them, and searches as they ask for them.

Documents: a stable `docid` names a document inside a collection. Sending the same docid again with
new text re-indexes it; with the same text and new `__ref`/`__tags`/`__meta`/`title` it only updates
that metadata (no re-embedding); with nothing new it does no work. `__meta` is returned with results
and never embedded. Bulk import is JSON Lines: one `KnowledgeDocument` object per line.

Search: `top` 1–128 (default 5), `minScore` 0–1 (default 0.2: the minimum cosine similarity between
query and passage; for the `lexical` reranker, the minimum BM25 score relative to the best hit),
`reranker` `rrf` (default: fuses the vector and lexical rankings by reciprocal rank), `lexical`
(keyword ranking alone), `none` (vector ranking alone) or `model` (a resolver model orders the
`rrf` candidates; gateways only, since it needs a model: the gateway's `resolver` or its own; the
score is then 1 for the model's first choice, falling evenly by rank), `includeReferences` (also return the other chunks sharing a hit's `__ref`). Several terms
are a ranked union: each term is searched, and the best score of a passage across terms ranks it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .api import GeneratedUsage

ContentType = Literal["text/plain", "text/markdown", "text/html", "application/pdf"]
Reranker = Literal["rrf", "lexical", "none", "model"]


class KnowledgeDocument(BaseModel):
    """One document, as sent to the management API or as one line of a JSON Lines import."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    docid: str = Field(min_length=1, max_length=256)
    text: str  # the content; for application/pdf, base64 of the file
    content_type: ContentType = "text/plain"
    title: str | None = Field(default=None, max_length=512)
    ref: str | None = Field(default=None, alias="__ref", max_length=256)
    tags: list[str] = Field(default_factory=list, alias="__tags")
    meta: dict[str, Any] = Field(default_factory=dict, alias="__meta")

    @field_validator("tags")
    @classmethod
    def _tags_bounded(cls, value: list[str]) -> list[str]:
        if len(value) > 64 or any(len(t) > 128 for t in value):
            raise ValueError("at most 64 tags of at most 128 characters")
        return value


class KnowledgeSearch(BaseModel):
    """A direct search of one collection (the collection and tenant come from the path and the key)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    query: str | list[str] = Field(min_length=1)
    top: int = Field(default=5, ge=1, le=128)
    min_score: float = Field(default=0.2, ge=0.0, le=1.0, alias="minScore")
    reranker: Reranker = "rrf"
    include_references: bool = Field(default=False, alias="includeReferences")

    @property
    def terms(self) -> list[str]:
        terms = [self.query] if isinstance(self.query, str) else self.query
        return [t for t in (t.strip() for t in terms) if t]


class Passage(BaseModel):
    """One retrieved chunk. `id` (`docid#position`) is what answers cite."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    docid: str
    position: int
    text: str
    score: float  # 0–1; see the module docstring for what it means per reranker
    similarity: float | None = None  # cosine between query and passage, when computed
    title: str | None = None
    headings: list[str] = Field(default_factory=list)
    ref: str | None = Field(default=None, alias="__ref")
    tags: list[str] = Field(default_factory=list, alias="__tags")
    meta: dict[str, Any] = Field(default_factory=dict, alias="__meta")
    references: list[Passage] = Field(default_factory=list)  # siblings by __ref (includeReferences)


class KnowledgeSearchResult(BaseModel):
    passages: list[Passage]
    embedding_tokens: int = 0


class IngestReport(BaseModel):
    """What an import did, line by line counted: `unchanged` documents cost no work."""

    total: int = 0
    created: int = 0
    updated: int = 0
    metadata_only: int = 0
    unchanged: int = 0
    failed: int = 0
    chunks: int = 0
    embedding_tokens: int = 0
    errors: list[str] = Field(default_factory=list)  # "line N: reason", first 100


QueryStrategy = Literal["Plain", "Concatenate", "UserRewrite", "FullRewrite", "QueryFunction"]

# What the retrieval service runs today: the management API refuses gateways asking for anything
# else (a clear 400 beats silently searching another way). The `model` reranker runs for gateways
# with an injecting strategy; a direct search has no model to ask, and `QueryFunction` gateways may
# search several times per request, each search a model call of its own, so both refuse it.
AVAILABLE_STRATEGIES: frozenset[str] = frozenset(
    {"Plain", "Concatenate", "UserRewrite", "FullRewrite", "QueryFunction"}
)
AVAILABLE_RERANKERS: frozenset[str] = frozenset({"rrf", "lexical", "none", "model"})


class GatewayKnowledge(BaseModel):
    """How a gateway grounds its answers on a collection.

    `strategy` turns the conversation into search terms: `Plain` (the last user message),
    `Concatenate` (the last `last_messages` user messages), `UserRewrite` / `FullRewrite` (a resolver
    model rewrites the recent user messages / the whole recent conversation into search queries;
    billed), `QueryFunction` (the model gets a search tool instead of injected passages).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    collection: str = Field(min_length=1, max_length=128)
    top: int = Field(default=5, ge=1, le=128)
    min_score: float = Field(default=0.2, ge=0.0, le=1.0, alias="minScore")
    reranker: Reranker = "rrf"
    strategy: QueryStrategy = "Plain"
    last_messages: int = Field(default=3, ge=1, le=20)
    resolver: str | None = None  # upstream id of the rewrite model (rewrite strategies)
    max_tool_rounds: int = Field(default=3, ge=1, le=8)  # QueryFunction: rounds of searches at most


class Grounding(BaseModel):
    """Which passages grounded an answer: in `generation_context.grounding` of the response."""

    id: str  # docid#position, as injected and cited
    docid: str
    score: float
    title: str | None = None
    url: str | None = None  # the document's `__meta.url`, when it is an http(s) URL

    @classmethod
    def of(cls, passage: Passage) -> Grounding:
        url = passage.meta.get("url")
        has_url = isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) <= 2048
        return cls(
            id=passage.id,
            docid=passage.docid,
            score=passage.score,
            title=passage.title,
            url=url if has_url else None,
        )


# What usage events of knowledge work name as their upstream (the lines are ours, not a model's).
KNOWLEDGE_UPSTREAM = "@aigw/knowledge"

# The function a `QueryFunction` gateway offers its model. Clients may not offer a tool of the same
# name to such a gateway (a 400): the worker answers every call of it itself.
KNOWLEDGE_TOOL_NAME = "knowledge_search"


class KnowledgeTool(BaseModel):
    """A `QueryFunction` gateway's search tool, as the retrieval service hands it to the worker.

    The worker runs the tool loop: it offers the function (already in the routed body's `tools`),
    answers each call of it with a `ToolSearch` to the retrieval service (`subjects.RETRIEVAL_TOOL`),
    and calls the model again with the results, at most `max_rounds` times; the client sees only
    the final answer (plus `generation_context.runned_functions` and `grounding`).
    """

    name: str = KNOWLEDGE_TOOL_NAME
    collection: str  # the collection's id (resolved for the caller's tenant by the retrieval service)
    top: int = Field(default=5, ge=1, le=128)
    min_score: float = Field(default=0.2, ge=0.0, le=1.0)
    reranker: Reranker = "rrf"
    max_rounds: int = Field(default=3, ge=1, le=8)


class ToolSearch(BaseModel):
    """One call of the knowledge tool: request-reply on `subjects.RETRIEVAL_TOOL` → `ToolSearchResult`.

    Tenant and key come from the envelope (the caller's key), never from the model's arguments.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str
    tenant: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    query: str = Field(min_length=1)
    top: int = Field(default=5, ge=1, le=128)
    min_score: float = Field(default=0.2, ge=0.0, le=1.0)
    reranker: Reranker = "rrf"


class ToolSearchResult(BaseModel):
    """What a tool call returns: `content` is the tool message for the model (the passages fenced as
    untrusted data, as injection does), `lines` the priced search. The retrieval service does not
    meter these lines: the worker merges every search of a request into one usage event (source
    `retrieval`), since metering keeps one event per request and source."""

    content: str
    grounding: list[Grounding] = Field(default_factory=list)
    lines: list[GeneratedUsage] = Field(default_factory=list)


class Collection(BaseModel):
    """A tenant's knowledge collection (its documents live in the knowledge store)."""

    model_config = ConfigDict(extra="forbid")

    id: str  # UUIDv7
    tenant: str
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    description: str = ""


class DocumentSummary(BaseModel):
    """A stored document as the management API lists and shows it (its text lives only as chunks)."""

    model_config = ConfigDict(populate_by_name=True)

    object: Literal["document"] = "document"
    docid: str
    title: str | None = None
    ref: str | None = Field(default=None, alias="__ref")
    tags: list[str] = Field(default_factory=list, alias="__tags")
    meta: dict[str, Any] = Field(default_factory=dict, alias="__meta")
    chunks: int = 0


KnowledgeOp = Literal["upsert", "import", "list", "get", "delete", "search", "drop"]


class KnowledgeRequest(BaseModel):
    """A management request to the retrieval service: NATS request-reply on `subjects.RETRIEVAL_MANAGE`.

    The edge fills `tenant`, `collection` (the collection's id) and `key_id` from the caller's key and
    the path, never from the body; the retrieval service applies them inside every store query.

    * `upsert`: `documents` (docid upsert semantics) → `IngestReport`;
    * `import`: `jsonl`, one `KnowledgeDocument` per line; bad lines are counted, not fatal →
      `IngestReport` (a whole import must fit in one NATS message: clients send big files in batches);
    * `list`: `offset`, `limit` → `{"object": "list", "data": [DocumentSummary…]}`;
    * `get` / `delete`: `docid` → `DocumentSummary` / `{"docid", "object": "document", "deleted": true}`;
    * `search`: `search` → `KnowledgeSearchResult`;
    * `drop`: every document of the collection → `{"collection", "deleted": bool}`.

    Embedding tokens spent by `upsert`/`import` are metered (`knowledge.embeddings.in`, source
    `retrieval`) to `key_id`; a direct `search` also bills `knowledge.search`.

    Errors reply with the header `headers.STATUS` and an `errors.ErrorBody` payload (400 bad input,
    404 unknown document, 503 store unavailable); no responders: 503; a timeout: 504.
    """

    model_config = ConfigDict(extra="forbid")

    op: KnowledgeOp
    tenant: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    key_id: str = ""
    documents: list[KnowledgeDocument] = Field(default_factory=list)
    jsonl: str | None = None
    docid: str | None = None
    search: KnowledgeSearch | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)
