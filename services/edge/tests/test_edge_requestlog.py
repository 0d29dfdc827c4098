"""Request log payloads: secrets never leave the edge, whatever shape they come in."""

from __future__ import annotations

import json

from aigw_edge.requestlog import PAYLOAD_LIMIT, REDACTED, _error_code, redact


def test_secret_fields_and_secret_looking_text_are_redacted_in_json() -> None:
    body = {
        "model": "support",
        "max_tokens": 50,  # a "token" word that is no secret
        "api_key": "anything-at-all",
        "metadata": {"Authorization": "Bearer abc", "X-Api-Key": "v", "note": "ok"},
        "messages": [
            {
                "role": "user",
                "content": "use sk-proj-ABCDEFGHIJKLMNOPQRSTUV and Bearer eyJhbGciOiJIUzI1NiJ9.x",
            },
            {"role": "user", "content": "password=hunter2; my aigw key aigw_" + "A" * 43},
            {"role": "user", "content": "aws AKIAABCDEFGHIJKLMNOP google AIza" + "b" * 35},
        ],
    }
    out = json.loads(redact(json.dumps(body).encode()))
    assert out["model"] == "support" and out["max_tokens"] == 50
    assert out["api_key"] == REDACTED
    assert out["metadata"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED, "note": "ok"}
    text = json.dumps(out)
    for secret in ("sk-proj-ABC", "eyJhbGci", "hunter2", "aigw_AAAA", "AKIAABCD", "AIzabbbb"):
        assert secret not in text, secret
    assert out["messages"][0]["content"].startswith("use [REDACTED] and [REDACTED]")


def test_non_json_bodies_are_redacted_as_text_and_cut() -> None:
    frames = b'data: {"content": "key sk-ABCDEFGHIJKLMNOPQRSTUVWX"}\n\n'
    assert "sk-ABC" not in redact(frames) and REDACTED in redact(frames)
    long = redact(b"x" * (PAYLOAD_LIMIT * 2))
    assert len(long) < PAYLOAD_LIMIT + 20 and long.endswith("[truncated]")


def test_error_code_of_openai_shaped_bodies() -> None:
    assert (
        _error_code(b'{"error": {"code": "rate_limit_exceeded", "type": "requests"}}')
        == "rate_limit_exceeded"
    )
    assert (
        _error_code(b'{"error": {"code": null, "type": "invalid_request_error"}}') == "invalid_request_error"
    )
    assert _error_code(b"not json") == "" and _error_code(b"[1]") == ""
