"""Fixtures for the retrieval tests: the real bundled embedder (loaded once) and both store adapters.

The Weaviate adapter runs against a real Weaviate started by testcontainers; where testcontainers or
a Docker engine is missing, its cases are skipped with the reason, and the same contract cases still
run against the embedded store.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aigw_retrieval.embed import Embeddings, MiniLMEmbedder
from aigw_retrieval.stores import EmbeddedStore, KnowledgeStore

WEAVIATE_IMAGE = "cr.weaviate.io/semitechnologies/weaviate:1.32.4"


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder(batch_size=16)
    _ = embedder.model  # load the weights once for the session
    return embedder


class CountingEmbedder:
    """The real embedder, counting what it is asked to embed (to prove when no work happens)."""

    def __init__(self, inner: MiniLMEmbedder, fail_after_calls: int | None = None) -> None:
        self.inner = inner
        self.calls = 0
        self.texts = 0
        self.fail_after_calls = fail_after_calls

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    async def embed(self, texts: list[str]) -> Embeddings:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("embedder crashed (test)")
        self.calls += 1
        self.texts += len(texts)
        return await self.inner.embed(texts)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def counting(minilm: MiniLMEmbedder) -> CountingEmbedder:
    return CountingEmbedder(minilm)


@pytest.fixture
def make_counting(minilm: MiniLMEmbedder) -> Callable[..., CountingEmbedder]:
    return lambda fail_after_calls=None: CountingEmbedder(minilm, fail_after_calls)


def _docker_reason() -> str | None:
    try:
        import docker  # type: ignore[import-untyped]
        import testcontainers  # noqa: F401
    except ImportError:
        return "testcontainers is not installed (install aigw-retrieval[test])"
    try:
        docker.from_env().ping()
    except Exception as exc:
        return f"no Docker engine reachable ({type(exc).__name__})"
    return None


@pytest.fixture(scope="session")
def weaviate_endpoint() -> Iterator[tuple[str, int, int]]:
    reason = _docker_reason()
    if reason:
        pytest.skip(f"Weaviate adapter not tested here: {reason}")
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(WEAVIATE_IMAGE)
        .with_env("AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED", "true")
        .with_env("PERSISTENCE_DATA_PATH", "/var/lib/weaviate")
        .with_env("DEFAULT_VECTORIZER_MODULE", "none")
        .with_env("CLUSTER_HOSTNAME", "node1")
        .with_exposed_ports(8080, 50051)
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        http, grpc = int(container.get_exposed_port(8080)), int(container.get_exposed_port(50051))
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{http}/v1/.well-known/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Weaviate did not become ready in 90 s")
            time.sleep(0.5)
        yield host, http, grpc
    finally:
        container.stop()


@pytest.fixture(params=["embedded", "weaviate"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[KnowledgeStore]:
    if request.param == "embedded":
        embedded = EmbeddedStore(tmp_path / "knowledge")
        yield embedded
        await embedded.close()
        return
    host, http, grpc = request.getfixturevalue("weaviate_endpoint")
    from aigw_retrieval.stores.weaviate import WeaviateStore

    weaviate_store = await WeaviateStore.connect(host, http, grpc)
    yield weaviate_store
    await weaviate_store.close()
