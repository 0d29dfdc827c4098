"""Calling an OpenAI-compatible upstream: one shared httpx client, auth, timeouts, error mapping.

One transport for the process (`transport.Http11Transport`, why not httpx's default is said there):
its keep-alive connections save a TCP (and TLS) handshake per request. Requests go straight to the
transport, not through an `httpx.AsyncClient`: redirects are never followed and proxies never read
from the environment (a tenant's endpoint must not send the gateway somewhere else: SSRF), and no
cookie jar is shared between tenants' requests. A tenant's own endpoint is checked with
`aigw_runtime.netguard` and reached at the address that was checked (a DNS answer may change in
between); catalog upstreams are the operator's, so they are called as configured.

Every failure leaves this module as a typed `GatewayError`, with a status chosen for what the
client should do: 429 keeps the upstream's Retry-After; an upstream that rejects the gateway's
credentials is a 502 (the client's own key is fine); timeouts are 504.

Bodies are read within bounds (see `limits.py`): a whole answer up to `upstream_max_body_bytes`
after decompression, and compressed bodies are inflated at most `_PIECE` bytes at a time (httpx's
decoders inflate a whole network read at once: 64 KiB of gzip may hold 64 MiB), so a compression
bomb is stopped at the cap instead of at the worker's memory limit.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from opentelemetry import trace

from aigw_contracts import UpstreamTarget
from aigw_contracts.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
)
from aigw_runtime import netguard, secretbox, telemetry

from .limits import response_too_large
from .settings import WorkerSettings
from .timeouts import Limits, limits_for
from .transport import Http11Transport

if TYPE_CHECKING:  # the providers build on this module's error mapping
    from .providers import Adapter, Prepared

_MESSAGE_LIMIT = 300  # characters of an upstream's error message passed on to the client
_ERROR_BODY_LIMIT = 64 * 1024
_DNS_TTL = 30.0  # seconds an own endpoint's checked addresses are reused
_KEEPALIVE_S = 30.0  # an idle upstream connection is closed after this
_ACCEPT_JSON = b"application/json"
_ACCEPT_STREAM = b"text/event-stream"
_USER_AGENT = f"python-httpx/{httpx.__version__}".encode()
_PIECE = 64 * 1024  # most bytes one step of inflating a compressed body produces


@dataclass(frozen=True, slots=True)
class _Resolved:
    url: str  # the base URL with the host replaced by the checked address
    host: str  # the Host header to send
    sni: str | None  # TLS server name (https to a hostname)
    expires: float


class Upstream:
    """Calls upstreams through one `Http11Transport` (or the transport a test passes in).

    A request is built as cheaply as httpx allows: the URL of each base URL is parsed once, headers
    are given as bytes with `Host` and `Content-Length` set, the body goes in as a ready
    `httpx.ByteStream`, and timeouts as the plain dict httpx's own `Timeout.as_dict()` makes.
    """

    def __init__(self, settings: WorkerSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.transport = transport or Http11Transport(
            keepalive_expiry=_KEEPALIVE_S, max_idle_per_origin=settings.max_inflight
        )
        self._allow = netguard.parse_allowlist(settings.upstream_allowlist)
        self._resolved: dict[str, _Resolved] = {}
        self._urls: dict[str, tuple[httpx.URL, bytes]] = {}

    async def aclose(self) -> None:
        await self.transport.aclose()

    # ------------------------------------------------------------------ request
    def _auth(self, target: UpstreamTarget, sealed: str | None = None) -> str | None:
        """The key to send: a deployment's own (`sealed`), else an own endpoint's, else the
        operator's key for the catalog provider."""
        if target.kind == "own":
            sealed = sealed or target.api_key
        if sealed and secretbox.is_sealed(sealed):
            try:
                return secretbox.unseal(sealed, self.settings.secrets_key.get_secret_value())
            except (secretbox.SecretError, ValueError) as exc:
                raise UpstreamError(
                    "The upstream's API key cannot be opened with this worker's AIGW_SECRETS_KEY",
                    code="upstream_not_configured",
                ) from exc
        if target.kind == "own" or sealed:
            return sealed or None
        key = self.settings.provider_key(target.provider)
        if key is None and target.provider != "sim":  # the simulator needs no key
            raise UpstreamError(
                f"The gateway has no credentials configured for the provider '{target.provider}'",
                code="upstream_not_configured",
            )
        return key

    async def _own_endpoint(self, base_url: str) -> _Resolved:
        cached = self._resolved.get(base_url)
        now = time.monotonic()
        if cached is not None and cached.expires > now:
            return cached
        # getaddrinfo blocks: resolve and check in a thread, then cache the verdict briefly.
        addresses = await asyncio.to_thread(netguard.check_url, base_url, self._allow)
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        address = str(addresses[0])
        netloc = f"[{address}]" if ":" in address else address
        if parts.port is not None:
            netloc += f":{parts.port}"
        resolved = _Resolved(
            url=urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)),
            host=parts.netloc.rpartition("@")[2],
            sni=host if parts.scheme == "https" and address != host else None,
            expires=now + _DNS_TTL,
        )
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[base_url] = resolved
        return resolved

    def _endpoint(self, base: str, path: str = "chat/completions") -> tuple[httpx.URL, bytes]:
        """The parsed URL of `{base}/{path}` and its Host header, parsed once per base and path."""
        found = self._urls.get(base + "\n" + path)
        if found is None:
            url = httpx.URL(base.rstrip("/") + "/" + path)
            if url.raw_scheme not in (b"http", b"https") or not url.raw_host:
                raise UpstreamError(f"The upstream's base URL is not an http(s) URL: {base!r}")
            if len(self._urls) > 10_000:
                self._urls.clear()
            found = self._urls[base + "\n" + path] = (url, url.netloc)
        return found

    async def build(
        self,
        target: UpstreamTarget,
        prepared: Prepared | bytes,
        remaining: float,
        stream: bool,
        limits: Limits | None = None,
        adapter: Adapter | None = None,
        api_key: str | None = None,
    ) -> httpx.Request:
        """The POST to `{base_url}/{path}` (`path`, body and headers from the provider's adapter:
        `providers/`), with the transport's share of `limits` (`timeouts.py`; the worker's
        settings when not given), bounded by the time left. A bare body is OpenAI's. `api_key`
        (sealed): a deployment's own (`balance.Pick`), instead of the target's."""
        if isinstance(prepared, bytes):
            from .providers import Prepared  # the providers build on this module: import late

            prepared = Prepared("chat/completions", prepared)
        body = prepared.body
        key = self._auth(target, api_key)
        extensions: dict[str, Any] = {}
        base = prepared.base or target.base_url
        if target.kind == "own":
            resolved = await self._own_endpoint(base)
            url, _ = self._endpoint(resolved.url, prepared.path)
            host = resolved.host.encode("idna")
            if resolved.sni:
                extensions["sni_hostname"] = resolved.sni
        else:
            url, host = self._endpoint(base, prepared.path)
        headers = [
            (b"Host", host),
            (b"Content-Type", b"application/json"),
            (b"Accept", _ACCEPT_STREAM if stream else _ACCEPT_JSON),
            (b"User-Agent", _USER_AGENT),
            (b"Content-Length", b"%d" % len(body)),
            *prepared.headers,
        ]
        if key:
            if adapter is None:
                headers.append((b"Authorization", b"Bearer " + key.encode("latin-1")))
            else:
                signed = f"{url.scheme}://{host.decode('ascii')}{url.raw_path.decode('ascii')}"
                headers.extend(adapter.auth(key, signed, prepared))
        if telemetry.tracing.on:  # the upstream joins the request's trace (the attempt's span)
            carrier: dict[str, str] = {}
            telemetry.inject(trace.get_current_span(), carrier)
            headers.extend((name.encode(), value.encode("latin-1")) for name, value in carrier.items())
        if limits is None:
            limits = limits_for(self.settings, None, stream, remaining)
        extensions["timeout"] = limits.transport()
        return httpx.Request(
            "POST", url, headers=headers, stream=httpx.ByteStream(body), extensions=extensions
        )

    async def open(
        self,
        request: httpx.Request,
        adapter: Adapter | None = None,
        seen: Callable[[httpx.Headers], None] | None = None,
    ) -> httpx.Response:
        """Send, for a streamed answer: the 2xx response, its body still to read (the caller closes
        it). A non-2xx answer becomes its GatewayError (its body read and the response closed), as
        the provider's adapter maps it (OpenAI's mapping when none is given). `seen` gets the
        response's headers, whatever its status (rate-limit headers: `balance.py`)."""
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise transport_error(exc, before_response=True) from None
        response.request = request
        if seen is not None:
            seen(response.headers)
        if response.status_code // 100 == 2:
            return response
        try:
            raw = await _read_limited(response)
        except (httpx.HTTPError, GatewayError):
            raw = b""
        finally:
            await response.aclose()
        if adapter is not None:
            raise adapter.error(response.status_code, raw, response.headers)
        raise status_error(response.status_code, raw, response.headers)

    async def fetch(self, request: httpx.Request) -> bytes:
        """Send, for a whole answer: its body (decoded if the upstream compressed it), at most
        `upstream_max_body_bytes` of it; the connection is back in the pool when this returns."""
        return await self.read_whole(await self.open(request))

    async def read_whole(self, response: httpx.Response) -> bytes:
        """The body of a 2xx response from `open`, as `fetch` returns it (and closes the response)."""
        limit = self.settings.upstream_max_body_bytes
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit and _identity(response):
                raise response_too_large("an answer", limit)  # no need to read any of it
            parts: list[bytes] = []
            size = 0
            async for part in body_chunks(response):
                size += len(part)
                if size > limit:
                    raise response_too_large("an answer", limit)
                parts.append(part)
            return b"".join(parts)
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        finally:
            await response.aclose()


def _identity(response: httpx.Response) -> bool:
    return response.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")


def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body of a response, one network read per chunk, straight from the transport (no httpx
    decoder or re-chunking layers); a compressed body (gzip or deflate) inflated in pieces of at
    most `_PIECE` bytes. Any other content coding is an `UpstreamError`."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    if _identity(response):
        return stream.__aiter__()
    return _inflated(stream, _Inflater(response.headers["content-encoding"]))


async def _inflated(stream: httpx.AsyncByteStream, inflater: _Inflater) -> AsyncIterator[bytes]:
    async for part in stream:
        for piece in inflater.feed(part):
            yield piece
    tail = inflater.flush()
    if tail:
        yield tail


class _Inflater:
    """gzip or deflate, inflated in bounded pieces (`zlib`'s `max_length`): the memory one network
    read can take is `_PIECE`, however much it expands to."""

    __slots__ = ("_raw_ok", "_z")

    def __init__(self, coding: str) -> None:
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 16)
            self._raw_ok = False
        elif coding == "deflate":
            self._z = zlib.decompressobj()
            self._raw_ok = True  # "deflate" without its zlib header is common: httpx accepts it too
        else:
            raise UpstreamError(
                f"The upstream model sent an answer in an unsupported encoding ({coding[:40]})"
            )

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            try:
                piece = self._z.decompress(data, _PIECE)
            except zlib.error:
                if not self._raw_ok:
                    raise UpstreamError(
                        "The upstream model sent a compressed answer that cannot be decoded"
                    ) from None
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                self._raw_ok = False
                continue
            self._raw_ok = False  # the header was fine: no second guess later
            if piece:
                yield piece
            data = self._z.unconsumed_tail
            if not data and len(piece) < _PIECE:
                return

    def flush(self) -> bytes:
        """What is left once every piece was fed: at most what zlib holds back, never more input."""
        try:
            return self._z.flush()
        except zlib.error:
            raise UpstreamError(
                "The upstream model sent a compressed answer that cannot be decoded"
            ) from None


async def _read_limited(response: httpx.Response) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for part in body_chunks(response):
        parts.append(part)
        size += len(part)
        if size >= _ERROR_BODY_LIMIT:
            break
    return b"".join(parts)[:_ERROR_BODY_LIMIT]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def upstream_message(raw: bytes) -> tuple[str, str | None]:
    """The message and param of an upstream's error body (OpenAI's shape or plain text)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return _short(raw.decode("utf-8", "replace")), None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        param = error.get("param")
        return _short(str(error.get("message") or "")), param if isinstance(param, str) else None
    if isinstance(error, str):
        return _short(error), None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return _short(body["message"]), None
    return _short(raw.decode("utf-8", "replace")), None


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class UpstreamStatusError(UpstreamError):
    """An upstream's HTTP error status (other than those with an error class of their own), kept so
    `retry.py` can tell a fault worth retrying (408, 409, 5xx) from a refusal (any other 4xx)."""

    def __init__(self, message: str, upstream_status: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.upstream_status = upstream_status


def status_error(status: int, raw: bytes, headers: httpx.Headers) -> GatewayError:
    message, param = upstream_message(raw)
    if status == 429:
        return RateLimited(
            f"The upstream model is rate limited{': ' + message if message else ''}",
            retry_after=retry_after(headers),
        )
    if status in (400, 422):
        return InvalidRequest(
            message or f"The upstream model rejected the request (HTTP {status})", param=param
        )
    if status in (401, 403):
        return UpstreamStatusError(
            f"The upstream model refused the gateway's credentials for it (HTTP {status}); "
            "this is a gateway configuration problem, not a problem with your API key",
            status,
            code="upstream_auth_failed",
        )
    detail = f": {message}" if message else ""
    wait = retry_after(headers) if status in (408, 409) or status >= 500 else None
    return UpstreamStatusError(f"The upstream model answered HTTP {status}{detail}", status, retry_after=wait)


def transport_error(exc: httpx.HTTPError, before_response: bool = False) -> GatewayError:
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return DeadlineExceeded("The upstream model could not be reached in time")
    if isinstance(exc, httpx.TimeoutException):
        if before_response:
            return DeadlineExceeded("The upstream model did not start answering in time")
        return DeadlineExceeded("The upstream model stopped sending data (idle timeout)")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("Could not connect to the upstream model")
    if before_response:
        return UpstreamError("The connection to the upstream model failed before it answered")
    return UpstreamError("The connection to the upstream model was lost mid-answer")
