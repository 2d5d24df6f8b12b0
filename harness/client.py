"""Async chat client over one or more OpenAI-compatible endpoints.

Retries only what is transient (connection failures, 429, 5xx) with exponential backoff; a
timeout or a 4xx is the answer and is recorded as the item's error. Several endpoints (replicas)
share the load: each request goes to the endpoint with the fewest requests in flight.

A dead server is not an item's error: when the launched server has exited, or every endpoint has
refused connections for ``down_grace_s``, requests raise :class:`ServerDown` and the run stops,
instead of retrying every remaining item against a closed port.
"""

from __future__ import annotations

import asyncio
import html
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import openai
from openai import AsyncOpenAI

from bench.errors import ServerError, UserError
from bench.pack import Sampling
from bench.transcript import Request, Response, ToolCall, Usage

ERROR_BODY_CHARS = 300
ServerCheck = Callable[[], str | None]  # None while the server lives, else the line saying it died


class RequestFailed(Exception):
    """A request that failed for good (after retries, or not retryable)."""


class ServerDown(ServerError):
    """The server is gone: the run stops here (finished items are kept and it can be resumed)."""


@dataclass
class ClientConfig:
    """Where requests go and how many at once. The limits have no defaults here: a run takes them from
    its options (``bench.run.options.EvalOptions``), the one place their defaults are written."""

    endpoints: Sequence[str]  # base URLs ending in /v1
    model: str
    concurrency: int
    timeout_s: float
    api_key: str = "EMPTY"
    max_retries: int = 4
    backoff_s: float = 1.0
    down_grace_s: float = 10.0  # every endpoint refusing connections this long: the server is down


@dataclass
class _Endpoint:
    url: str
    client: AsyncOpenAI
    in_flight: int = 0
    sent: int = 0
    refusing_since: float | None = None  # first refused connection since the last answer


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0
    per_endpoint: dict[str, int] = field(default_factory=dict)


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, openai.APITimeoutError):
        return False
    if isinstance(exc, openai.APIConnectionError):
        return True
    if isinstance(exc, openai.RateLimitError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def request_fields(sampling: Sampling) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one place sampling becomes request fields: OpenAI arguments, and vLLM's extra_body."""
    kwargs: dict[str, Any] = {"temperature": sampling.temperature, "max_tokens": sampling.max_tokens}
    if sampling.top_p is not None:
        kwargs["top_p"] = sampling.top_p
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed
    extra: dict[str, Any] = {}
    if sampling.top_k is not None:
        extra["top_k"] = sampling.top_k
    if not sampling.thinking:
        extra["chat_template_kwargs"] = {"enable_thinking": False}
    return kwargs, extra


def parse_message(choice: Any, usage: Any, latency_s: float, endpoint: str) -> Response:
    """Keep content, reasoning and tool calls apart; read reasoning from either field name."""
    message = choice.message
    extra = getattr(message, "model_extra", None) or {}
    reasoning = getattr(message, "reasoning", None) or extra.get("reasoning") or extra.get("reasoning_content")
    calls = [
        ToolCall(id=call.id or "", name=call.function.name, arguments=call.function.arguments or "")
        for call in (message.tool_calls or [])
        if getattr(call, "function", None) is not None
    ]
    details = getattr(usage, "completion_tokens_details", None) if usage else None
    return Response(
        content=message.content,
        reasoning=reasoning,
        tool_calls=calls,
        finish_reason=choice.finish_reason,
        usage=Usage(
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            reasoning_tokens=(getattr(details, "reasoning_tokens", 0) or 0) if details else 0,
        ),
        latency_s=latency_s,
        endpoint=endpoint,
    )


class ChatClient:
    """Bounded-concurrency chat completions across endpoints."""

    def __init__(self, config: ClientConfig, server_down: ServerCheck | None = None) -> None:
        if not config.endpoints:
            raise ValueError("at least one endpoint is needed")
        self.config = config
        # The SDK's own HTTP client: a plain httpx client here measured 2.5x slower at 8 in flight
        # (small writes stalled on Nagle/delayed-ACK); the semaphore below bounds concurrency anyway.
        self._endpoints = [
            _Endpoint(url, AsyncOpenAI(base_url=url, api_key=config.api_key, max_retries=0, timeout=config.timeout_s))
            for url in config.endpoints
        ]
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._server_down = server_down
        self.stats = ClientStats()

    def check_server(self) -> None:
        """Raise :class:`ServerDown` when the launched server exited or every endpoint keeps refusing."""
        if self._server_down is not None and (line := self._server_down()):
            raise ServerDown(line)
        now = time.monotonic()
        since = [e.refusing_since for e in self._endpoints]
        if all(s is not None and now - s >= self.config.down_grace_s for s in since):
            urls = ", ".join(e.url for e in self._endpoints)
            raise ServerDown(f"every endpoint refused connections for {self.config.down_grace_s:.0f} s ({urls}): "
                             "is the server still running?")

    def _pick(self) -> _Endpoint:
        return min(self._endpoints, key=lambda e: (e.in_flight, e.sent))

    async def chat(self, request: Request) -> Response:
        """Send one chat request; retry transient failures; raise RequestFailed otherwise."""
        # The request records the sampling it was sent with; read it back typed, then map it once.
        kwargs, extra = request_fields(Sampling.model_validate(request.sampling))
        if request.tools:
            kwargs["tools"] = request.tools
            if request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        if request.response_format is not None:
            kwargs["response_format"] = request.response_format
        async with self._semaphore:
            attempt = 0
            while True:
                self.check_server()
                endpoint = self._pick()
                endpoint.in_flight += 1
                endpoint.sent += 1
                self.stats.requests += 1
                self.stats.per_endpoint[endpoint.url] = self.stats.per_endpoint.get(endpoint.url, 0) + 1
                started = time.perf_counter()
                try:
                    completion = await endpoint.client.chat.completions.create(
                        model=self.config.model, messages=cast(Any, request.messages), extra_body=extra or None, **kwargs
                    )
                except Exception as exc:
                    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
                        endpoint.refusing_since = endpoint.refusing_since or time.monotonic()
                        self.check_server()
                    if isinstance(exc, openai.OpenAIError) and _is_transient(exc) and attempt < self.config.max_retries:
                        attempt += 1
                        self.stats.retries += 1
                        delay = self.config.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random())
                        await asyncio.sleep(delay)
                        continue
                    self.stats.failures += 1
                    raise RequestFailed(_describe(exc, endpoint.url)) from exc
                finally:
                    endpoint.in_flight -= 1
                endpoint.refusing_since = None
                latency = time.perf_counter() - started
                if not completion.choices:
                    raise RequestFailed(f"{endpoint.url}: response had no choices")
                return parse_message(completion.choices[0], completion.usage, latency, endpoint.url)

    async def close(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.client.close()


def _describe(exc: Exception, url: str) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return f"{url}: request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"{url}: cannot connect ({exc.__cause__ or exc})"
    if isinstance(exc, openai.APIStatusError):
        body = one_line(exc.response.text) if exc.response is not None else ""
        return f"{url}: HTTP {exc.status_code}: {body}"
    return f"{url}: {type(exc).__name__}: {exc}"


def one_line(body: str, limit: int = ERROR_BODY_CHARS) -> str:
    """An error body as one short line: an HTML error page becomes its text, whitespace collapsed."""
    if re.search(r"<(html|body|head|title|h1|p)\b", body, re.IGNORECASE):
        body = html.unescape(re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", body, flags=re.IGNORECASE | re.DOTALL))
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_endpoint(url: str) -> str:
    """Accept http://host:port, .../v1 or .../v1/ and return the /v1 base URL."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url if url.endswith("/v1") else url + "/v1"


def server_root(endpoint: str) -> str:
    """The server root (for /health, /metrics, /version) of a /v1 base URL."""
    return endpoint[: -len("/v1")] if endpoint.endswith("/v1") else endpoint


def served_models(url: str, timeout_s: float) -> list[str]:
    """The model names an OpenAI-compatible endpoint (its /v1 URL) serves; one line when it cannot say."""
    try:
        response = httpx.get(f"{url}/models", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach endpoint {url}: {type(exc).__name__} ({exc}); is the server running?") from exc
    if response.status_code != 200:
        raise UserError(f"endpoint {url} answered GET /models with HTTP {response.status_code}: is it an OpenAI-compatible server?")
    try:
        return [str(card["id"]) for card in response.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"endpoint {url} returned an unexpected /models body") from exc
