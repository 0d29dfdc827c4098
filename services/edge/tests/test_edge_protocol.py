"""Pure pieces of the relay: validation errors naming the param, SSE framing, the envelope, trace."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from aigw_contracts import ApiKey, ChatCompletionRequest, ChatEnvelope
from aigw_edge import sse
from aigw_edge.bus import parse_headers
from aigw_edge.errors import invalid_request, retry_after_headers
from aigw_edge.routes.chat import envelope_json
from aigw_edge.trace import trace_json, valid_traceparent

BASE = '"model": "m", "messages": [{"role": "user", "content": "x"}]'


def _error(body: str) -> tuple[str | None, str, str | None]:
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate_json(body)
    err = invalid_request(exc.value)
    assert err.status == 400 and err.type == "invalid_request_error"
    return err.param, err.message, err.code


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        ('{"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}', "messages[0].content"),
        ('{"model": "m", "messages": [{"role": "user", "content": 1}]}', "messages[0].content"),
        ("{" + BASE + ', "tool_choice": 5}', "tool_choice"),
        ("{" + BASE + ', "metadata": {"k": 1}}', "metadata.k"),
        ("{" + BASE + ', "n": 0}', "n"),
        ('{"model": "", "messages": [{"role": "user", "content": "x"}]}', "model"),
        ('{"model": "m", "messages": "hi"}', "messages"),
    ],
)
def test_validation_errors_name_the_field_as_openai_writes_it(body: str, param: str) -> None:
    assert _error(body)[0] == param


def test_an_unknown_field_is_named_like_openai_does() -> None:
    param, message, _ = _error("{" + BASE + ', "frobnicate": 1}')
    assert param == "frobnicate" and message == "Unrecognized request argument supplied: frobnicate"


def test_a_whole_request_rule_names_the_field_its_message_quotes() -> None:
    param, message, _ = _error('{"model": "m"}')
    assert param == "messages" and "at least one message" in message


def test_malformed_json_has_no_param_and_says_so() -> None:
    param, message, code = _error('{"model": ')
    assert param is None and code == "invalid_json" and "JSON" in message


def test_retry_after_is_whole_seconds_rounded_up_and_ms_only_for_429() -> None:
    assert retry_after_headers(429, 1.2) == [(b"retry-after", b"2"), (b"retry-after-ms", b"1200")]
    assert retry_after_headers(503, 3.0) == [(b"retry-after", b"3")]


def test_sse_frames_payloads_verbatim() -> None:
    assert sse.frame(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse.final(b'{"a":1}\n{"b":2}') == b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    assert sse.error(b'{"error":{}}') == b'data: {"error":{}}\n\ndata: [DONE]\n\n'


def test_a_payload_with_line_breaks_stays_one_event() -> None:
    framed = sse.frame(b'{\n  "a": 1\n}')
    assert framed == b'data: {\ndata:   "a": 1\ndata: }\n\n'
    # What an SSE reader reconstructs: data lines joined with newlines.
    data = "\n".join(line.removeprefix("data: ") for line in framed.decode().strip("\n").split("\n"))
    assert json.loads(data) == {"a": 1}


def test_the_envelope_is_a_valid_chat_envelope_with_the_body_as_its_request() -> None:
    body = b'{"model": "g:0001", "messages": [{"role": "user", "content": "caf\xc3\xa9 \\"q\\""}], "seed": 3}'
    key = ApiKey(id='k"1', tenant="t\\1", hash="h", kind="public")
    now = time.time()
    raw = envelope_json("rid", key, "aigw.v1.reply.e.rid", now, now + 30, trace_json(None, None, "rid"), body)
    env = ChatEnvelope.model_validate_json(raw)
    assert (env.request_id, env.tenant, env.key_id, env.key_kind) == ("rid", "t\\1", 'k"1', "public")
    assert env.deadline == now + 30 and env.received_at == now
    assert env.request == ChatCompletionRequest.model_validate_json(body)
    assert env.request.messages[0].content == 'café "q"'


def test_a_valid_traceparent_is_forwarded_and_an_invalid_one_replaced() -> None:
    good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert json.loads(trace_json(good, b"a=1,b=2", "r")) == {
        "traceparent": good.decode(),
        "tracestate": "a=1,b=2",
    }
    for bad in (b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01", b"ff-" + good[3:], b"nonsense", b"00-ABC"):
        assert not valid_traceparent(bad)
        made = json.loads(trace_json(bad, None, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"))["traceparent"]
        assert made.startswith("00-0190a1b2c3d47e5f8a9b0c1d2e3f4a5b-") and valid_traceparent(made.encode())


def test_nats_header_blocks_parse_like_nats_py_reports_them() -> None:
    block = b'NATS/1.0\r\nAigw-Event: delta\r\nAigw-Seq: 12\r\nAigw-Params: {"stop":["a:b"]}\r\n\r\n'
    assert parse_headers(block) == {
        "Aigw-Event": "delta",
        "Aigw-Seq": "12",
        "Aigw-Params": '{"stop":["a:b"]}',
    }
    assert parse_headers(b"NATS/1.0 503\r\n\r\n") == {"Status": "503"}
    assert parse_headers("NATS/1.0\r\nAigw-Gateway: café:0001\r\n\r\n".encode()) == {
        "Aigw-Gateway": "café:0001"
    }
    assert parse_headers(None) == {}
