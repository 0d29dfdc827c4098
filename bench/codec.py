"""What decoding and encoding an internal envelope costs: pydantic (today) against the alternatives.

    uv run --with msgspec --with orjson python -m bench.codec

The routed `ChatEnvelope` (router → worker) of a `make bench` request is decoded and encoded with
* pydantic, as the services do (`ChatEnvelope.routed`, `forward_json`): the envelope and the public
  request inside it validated again at every hop;
* the standard library's `json` and `orjson`, into plain dicts (no validation at all);
* msgspec, into `Struct`s mirroring the envelope's own fields (types checked) with the public
  request kept as a dict: the request is validated once, by the edge, with pydantic.
Reported in µs per operation (best of `--repeat` timings of `--number` calls each; best, not
median, because a shared machine only ever adds time). msgspec and orjson are not dependencies of
aigw: `uv run --with` brings them for this measurement alone.
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from collections.abc import Callable
from typing import Any

from aigw_contracts import ChatCompletionRequest, ChatEnvelope, RoutedCall, UpstreamTarget
from aigw_contracts.config import Prices


def sample_envelope() -> bytes:
    """A routed envelope as `make bench` sends it: one user message, a gateway, the simulator."""
    request = ChatCompletionRequest.model_validate(
        {
            "model": "demo",
            "messages": [{"role": "user", "content": "Benchmark prompt of a typical size. [sim tokens=16]"}],
        }
    )
    target = UpstreamTarget(
        id="01990000-0000-7000-8000-0000000000aa",
        kind="own",
        provider="openai-compatible",
        model="sim-model",
        base_url="http://127.0.0.1:8080/v1",
        api_key="sealed:" + "x" * 80,
        prices=Prices(),
    )
    envelope = ChatEnvelope(
        request_id="0199a000-0000-7000-8000-000000000001",
        tenant="demo",
        key_id="0199a000-0000-7000-8000-000000000002",
        reply="aigw.v1.reply.edge-1.0199a000-0000-7000-8000-000000000001",
        deadline=time.time() + 300,
        trace={"traceparent": "00-0199a000000070008000000000000001-1234567890abcdef-00"},
        request=request,
    )
    envelope.route = RoutedCall(
        gateway_id="0199a000-0000-7000-8000-000000000003",
        gateway_slug="demo:0003",
        upstream=target,
        body={"messages": [m.model_dump(exclude_none=True) for m in request.messages]},
        params_used={},
        response_model="sim-model",
        client_span=(0, 1),
    )
    return envelope.forward_json()


def _time(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def _msgspec_codecs(raw: bytes) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    import msgspec

    # The envelope's own fields, mirrored (types checked; the public request stays a dict).
    opt_dict = dict[str, Any] | None
    target = msgspec.defstruct(
        "Target",
        [
            ("id", str),
            ("kind", str),
            ("provider", str),
            ("model", str),
            ("base_url", str),
            ("api_key", str | None, None),
            ("prices", dict[str, Any]),
            ("timeouts", opt_dict, None),
            ("max_retries", int | None, None),
        ],
        kw_only=True,
    )
    route = msgspec.defstruct(
        "Route",
        [
            ("gateway_id", str | None, None),
            ("gateway_slug", str | None, None),
            ("upstream", target),
            ("body", dict[str, Any]),
            ("prefill", str | None, None),
            ("params_used", dict[str, Any], msgspec.field(default_factory=dict)),
            ("response_model", str),
            ("knowledge", opt_dict, None),
            ("fallbacks", list[target], msgspec.field(default_factory=list)),  # type: ignore[valid-type]
            ("knowledge_tool", opt_dict, None),
            ("grounding", list[dict[str, Any]], msgspec.field(default_factory=list)),
            ("prior_usage", list[dict[str, Any]], msgspec.field(default_factory=list)),
            ("purpose", str, "chat"),
            ("routed_complexity", str | None, None),
            ("client_span", tuple[int, int] | None, None),
            ("timeouts", opt_dict, None),
        ],
        kw_only=True,
    )
    envelope = msgspec.defstruct(
        "Envelope",
        [
            ("v", int, 1),
            ("request_id", str),
            ("tenant", str),
            ("key_id", str),
            ("key_kind", str, "private"),
            ("reply", str),
            ("deadline", float),
            ("received_at", float),
            ("trace", dict[str, str], msgspec.field(default_factory=dict)),
            ("request", dict[str, Any]),
            ("route", route | None, None),
        ],
        kw_only=True,
        forbid_unknown_fields=True,
    )
    decoder = msgspec.json.Decoder(envelope)
    encoder = msgspec.json.Encoder()
    decoded = decoder.decode(raw)
    return {
        "msgspec (typed Structs, request as dict)": (
            lambda: decoder.decode(raw),
            lambda: encoder.encode(decoded),
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    raw = sample_envelope()
    envelope = ChatEnvelope.routed(raw)
    plain = json.loads(raw)
    codecs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "pydantic (ChatEnvelope.routed / forward_json)": (
            lambda: ChatEnvelope.routed(raw),
            envelope.forward_json,
        ),
        "json (stdlib, dicts)": (lambda: json.loads(raw), lambda: json.dumps(plain).encode()),
    }
    try:
        import orjson

        codecs["orjson (dicts)"] = (lambda: orjson.loads(raw), lambda: orjson.dumps(plain))
    except ImportError:
        print("orjson not installed: uv run --with orjson …")
    try:
        codecs.update(_msgspec_codecs(raw))
    except ImportError:
        print("msgspec not installed: uv run --with msgspec …")
    print(f"routed envelope: {len(raw)} bytes; µs per operation (best of {args.repeat})")
    base_decode = 0.0
    for name, (decode, encode) in codecs.items():
        d, e = _time(decode, args.number, args.repeat), _time(encode, args.number, args.repeat)
        base_decode = base_decode or d
        print(f"  {name:46} decode {d:7.1f}  encode {e:7.1f}  (decode ÷ pydantic {d / base_decode:.2f})")


if __name__ == "__main__":
    main()
