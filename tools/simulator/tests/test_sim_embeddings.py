"""`POST /v1/embeddings` as the openai SDK sees it: vectors that depend on the input alone, both
encodings, `dimensions`, errors and faults."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import openai
import pytest

from aigw_simulator.embeddings import DEFAULT_DIM, tokens, vector

if TYPE_CHECKING:
    from conftest import SimProcess


def test_vectors_are_deterministic_unit_vectors_in_both_encodings(sim: SimProcess) -> None:
    client = sim.client()
    texts = ["hello world", "hello world!", "another"]
    packed = client.embeddings.create(model="e", input=texts)  # the SDK asks for base64
    floats = client.embeddings.create(model="e", input=texts, encoding_format="float")
    assert [d.embedding for d in packed.data] == [d.embedding for d in floats.data]
    assert [d.embedding for d in floats.data] == [vector(t) for t in texts]
    assert len(floats.data[0].embedding) == DEFAULT_DIM
    assert floats.data[0].embedding != floats.data[1].embedding
    assert all(abs(math.sqrt(sum(x * x for x in d.embedding)) - 1) < 1e-5 for d in floats.data)
    assert floats.usage.prompt_tokens == sum(tokens(t) for t in texts) == 2 + 3 + 1
    short = client.embeddings.create(model="e", input=[[1, 2, 3]], dimensions=8)
    assert short.data[0].embedding == vector([1, 2, 3], 8) and short.usage.prompt_tokens == 3


def test_bad_requests_and_faults(sim: SimProcess) -> None:
    client = sim.client()
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="e", input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="e", input="x", dimensions=0)
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="e", input="boom [sim fault=500]")
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="e", input="slow down [sim fault=429 fault_times=1]")
    assert client.embeddings.create(model="e", input="slow down [sim fault=429 fault_times=1]").data
