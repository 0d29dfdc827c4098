"""The configured store and embedder, from one settings object."""

from __future__ import annotations

from .embed import Embedder, MiniLMEmbedder, OpenAIEmbedder
from .settings import RetrievalSettings
from .stores import EmbeddedStore, KnowledgeStore


async def build_store(settings: RetrievalSettings) -> KnowledgeStore:
    if settings.knowledge_store == "weaviate":
        from .stores.weaviate import WeaviateStore

        return await WeaviateStore.connect(
            settings.weaviate_host, settings.weaviate_port, settings.weaviate_grpc_port
        )
    return EmbeddedStore(settings.knowledge_path)


def build_embedder(settings: RetrievalSettings) -> Embedder:
    if settings.embedder == "openai":
        return OpenAIEmbedder(
            settings.embeddings_base_url,
            settings.embeddings_model,
            settings.embeddings_dim,
            api_key=settings.embeddings_api_key,
            batch_size=settings.embeddings_batch,
        )
    return MiniLMEmbedder(batch_size=settings.embeddings_batch)
