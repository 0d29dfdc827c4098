"""`POST /v1/embeddings`, the retrieval side: embed a client's inputs with the service's embedder.

The edge sends an `EmbedJob` (`subjects.RETRIEVAL_EMBED`); the answer is an `EmbedResult` JSON line
and the raw float32 vectors (see `aigw_contracts.embeddings`). The tokens the model read are billed
here, where they are counted, as `inference.embeddings.in` (`AIGW_PRICE_EMBEDDINGS_TOKEN`), in one
usage event per request, like every other producer's.

`model` must name this service's embedder: its full name (`sentence-transformers/all-MiniLM-L6-v2`)
or the part after the last `/`, any case. `dimensions` below the model's keeps the first
`dimensions` components, renormalized (as OpenAI's text-embedding-3 models do; MiniLM was not trained
for it, so similarity quality drops). Token arrays are ids of the model's own tokenizer (the local
model's WordPiece), decoded back to text; another embedder refuses them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import numpy as np
from pydantic import ValidationError

from aigw_contracts import errors, skus
from aigw_contracts.api import GeneratedUsage
from aigw_contracts.embeddings import EmbedJob, EmbedResult

from .embed import MiniLMEmbedder
from .manage import Reply
from .service import Knowledge

log = logging.getLogger("aigw.retrieval.embeddings")

_HEADROOM = 4096  # bytes of the bus payload kept for the JSON line and headers


def model_matches(requested: str, name: str) -> bool:
    wanted = requested.strip().lower()
    return wanted in (name.lower(), name.rsplit("/", 1)[-1].lower())


class EmbeddingsAPI:
    def __init__(self, knowledge: Knowledge, max_payload: int) -> None:
        self.knowledge = knowledge
        self.max_payload = max_payload

    async def answer(self, data: bytes) -> Reply:
        try:
            job = EmbedJob.model_validate_json(data)
        except ValidationError as exc:
            return errors.error_reply(errors.invalid_message(exc, "embedding job"))
        try:
            return await self.embed(job), None
        except errors.GatewayError as err:
            return errors.error_reply(err)
        except Exception:
            log.exception("embedding failed", extra={"request_id": job.request_id})
            return errors.error_reply(errors.InternalError("The embedding failed; it has been logged."))

    def _texts(self, job: EmbedJob) -> list[str]:
        if job.texts is not None:
            return job.texts
        embedder = self.knowledge.embedder
        if not isinstance(embedder, MiniLMEmbedder):
            raise errors.InvalidRequest(
                "This embedding model takes text input, not token arrays.", param="input"
            )
        vocab = embedder.model.tokenizer.get_vocab_size()
        for index, ids in enumerate(job.tokens or ()):
            if any(not 0 <= i < vocab for i in ids):
                raise errors.InvalidRequest(f"Token ids must be below {vocab}.", param=f"input[{index}]")
        return [embedder.model.tokenizer.decode(ids, skip_special_tokens=True) for ids in job.tokens or ()]

    async def embed(self, job: EmbedJob) -> bytes:
        started = datetime.now(UTC)
        k = self.knowledge
        embedder = k.embedder
        if not model_matches(job.model, embedder.name):
            raise errors.NotFound(
                f"The model '{job.model}' does not exist or is not an embedding model; "
                f"this gateway embeds with '{embedder.name}'.",
                param="model",
                code="model_not_found",
            )
        dim = embedder.dim
        if job.dimensions is not None and job.dimensions > dim:
            raise errors.InvalidRequest(
                f"'{embedder.name}' has at most {dim} dimensions.", param="dimensions"
            )
        dim = job.dimensions or dim
        texts = self._texts(job)
        fits = (self.max_payload - _HEADROOM) // (dim * 4)
        if len(texts) > fits:
            raise errors.InvalidRequest(
                f"At most {fits} inputs per request with this model ({dim} dimensions); split the request.",
                param="input",
            )
        found = await embedder.embed(texts)
        vectors = found.vectors
        if dim < vectors.shape[1]:
            vectors = vectors[:, :dim]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        price = k.settings.price_embeddings_token
        lines = [
            GeneratedUsage.priced(
                skus.EMBEDDINGS_IN, price, found.tokens, skus.embeddings_description(embedder.name)
            )
        ]
        k.meter(
            request_id=job.request_id,
            tenant=job.tenant,
            key_id=job.key_id,
            lines=lines if found.tokens else [],
            started_at=started,
            metadata=job.metadata,
        )
        head = EmbedResult(model=embedder.name, count=len(texts), dim=dim, tokens=found.tokens, lines=lines)
        raw = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        return head.model_dump_json().encode() + b"\n" + raw
