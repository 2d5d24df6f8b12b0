"""The three requests divergence needs from an OpenAI-compatible server, and what each answer means.

- ``/tokenize`` (vLLM, at the server root): token ids of a plain text, or of a conversation rendered
  with the model's own chat template. The base's ids are stored and sent to the candidate as is,
  so both see exactly the same tokens; the candidate's own ``/tokenize`` proves it splits alike.
- ``/v1/completions`` with ``prompt_logprobs: k`` (a vLLM extension): for every prompt position
  the top-k next-token logprobs, plus the token that actually follows. A server that ignores or
  refuses the field cannot be measured, and says so in one line.
- ``/v1/completions`` greedy, with ``return_token_ids``: continuations for generation drift.

Transient failures (connection refused, 5xx) are retried with backoff; anything else fails the
measurement with the server's own words, never a silent gap.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from bench.client import one_line, server_root
from bench.errors import UserError

RETRIES = 4
_MAX_ALLOWED = re.compile(r"max allowed:\s*(\d+)")


class NotMeasurable(UserError):
    """The endpoint does not return prompt logprobs: divergence cannot be measured there."""


class RequestError(UserError):
    """A request failed for good (after retries, or not retryable)."""


@dataclass
class PromptLogprobs:
    """One text's prompt logprobs, positions 1..n-1 (position 0 has no prediction).

    ``top_ids``/``top_lp``: the top-k of each position in rank order (padded with -1 / -inf when
    the server returned fewer); ``actual_lp``: the logprob of the token that actually follows;
    ``decoded``: that token as text, as the server decoded it.
    """

    top_ids: NDArray[np.int32]
    top_lp: NDArray[np.float32]
    actual_lp: NDArray[np.float32]
    decoded: list[str]


@dataclass
class Continuation:
    token_ids: list[int]
    finish_reason: str | None
    text: str


def parse_prompt_logprobs(entries: list[Any], token_ids: list[int], k: int, where: str) -> PromptLogprobs:
    """Turn vLLM's per-position dicts (token id -> logprob, rank, decoded_token) into arrays."""
    positions = len(token_ids) - 1
    if len(entries) != len(token_ids):
        raise RequestError(f"{where}: {len(entries)} prompt_logprobs entries for {len(token_ids)} prompt tokens")
    top_ids = np.full((positions, k), -1, dtype=np.int32)
    top_lp = np.full((positions, k), -np.inf, dtype=np.float32)
    actual_lp = np.zeros(positions, dtype=np.float32)
    decoded: list[str] = []
    for index, entry in enumerate(entries[1:]):
        if not isinstance(entry, dict):
            raise RequestError(f"{where}: position {index + 1} has no prompt logprobs")
        actual = token_ids[index + 1]
        ranked = []
        found = None
        for key, value in entry.items():
            token = int(key)
            logprob = float(value.get("logprob", -np.inf)) if isinstance(value, dict) else float(value)
            rank = int(value.get("rank", 0) or 0) if isinstance(value, dict) else 0
            if token == actual:
                found = (logprob, str(value.get("decoded_token") or "") if isinstance(value, dict) else "")
            if token != actual or 0 < rank <= k:
                ranked.append((-logprob, rank, token))
        if found is None:
            raise RequestError(f"{where}: position {index + 1} does not list the prompt token {actual}")
        # vLLM lists the actual token too, with its own rank: only the k best belong to the top-k.
        ranked.sort()
        for slot, (negative, _rank, token) in enumerate(ranked[:k]):
            top_ids[index, slot] = token
            top_lp[index, slot] = -negative
        actual_lp[index] = found[0]
        decoded.append(found[1])
    return PromptLogprobs(top_ids, top_lp, actual_lp, decoded)


class Endpoint:
    """Async requests to one server, at most ``concurrency`` at a time."""

    def __init__(self, base_url: str, model: str, *, concurrency: int = 8, timeout_s: float = 600.0,
                 api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = server_root(self.base_url)
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)
        self._semaphore = asyncio.Semaphore(concurrency)
        self.has_tokenize = True

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, url: str, body: dict[str, Any], *, missing_ok: bool = False) -> dict[str, Any] | None:
        async with self._semaphore:
            for attempt in range(RETRIES + 1):
                try:
                    response = await self._client.post(url, json=body)
                except httpx.TimeoutException as exc:
                    raise RequestError(f"{url}: request timed out") from exc
                except httpx.TransportError as exc:
                    if attempt == RETRIES:
                        raise RequestError(f"{url}: cannot connect ({exc}); is the server running?") from exc
                    await asyncio.sleep(0.5 * 2**attempt)
                    continue
                if response.status_code >= 500 and attempt < RETRIES:
                    await asyncio.sleep(0.5 * 2**attempt)
                    continue
                if missing_ok and response.status_code in (404, 405):
                    return None
                if response.status_code != 200:
                    raise RequestError(f"{url}: HTTP {response.status_code}: {one_line(response.text)}")
                try:
                    data = response.json()
                except ValueError as exc:
                    raise RequestError(f"{url}: the answer is not JSON") from exc
                if not isinstance(data, dict):
                    raise RequestError(f"{url}: the answer is not a JSON object")
                return data
        raise AssertionError("unreachable")

    async def max_model_len(self) -> int | None:
        """The context length the server reports for the model (vLLM's /v1/models), if it says."""
        try:
            response = await self._client.get(f"{self.base_url}/models")
            for card in response.json().get("data", []):
                if card.get("id") == self.model and isinstance(card.get("max_model_len"), int):
                    return int(card["max_model_len"])
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return None
        return None

    async def tokenize(self, *, text: str | None = None, messages: list[dict[str, Any]] | None = None,
                       tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = False) -> list[int] | None:
        """Token ids of a text or a rendered conversation; None when the server has no /tokenize."""
        if not self.has_tokenize:
            return None
        body: dict[str, Any] = {"model": self.model}
        if messages is not None:
            body.update(messages=messages, add_generation_prompt=add_generation_prompt, add_special_tokens=False)
            if tools:
                body["tools"] = tools
        else:
            body.update(prompt=text or "", add_special_tokens=True)
        data = await self._post(f"{self.root}/tokenize", body, missing_ok=True)
        if data is None:
            self.has_tokenize = False
            return None
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RequestError(f"{self.root}/tokenize: the answer holds no token list")
        return [int(t) for t in tokens]

    async def detokenize(self, ids: list[int]) -> str:
        data = await self._post(f"{self.root}/detokenize", {"model": self.model, "tokens": ids}, missing_ok=True)
        return str(data.get("prompt", "")) if data else ""

    async def prompt_logprobs(self, ids: list[int], k: int, where: str) -> PromptLogprobs:
        """Teacher-forced top-k logprobs at every position of ``ids``."""
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": k}
        data = await self._post(f"{self.base_url}/completions", body)
        assert data is not None
        choices = data.get("choices") or []
        entries = choices[0].get("prompt_logprobs") if choices and isinstance(choices[0], dict) else None
        if not isinstance(entries, list):
            raise NotMeasurable(f"{self.base_url} returned no prompt_logprobs: divergence is not measurable there "
                                "(it needs prompt_logprobs on /v1/completions, as vLLM serves them)")
        return parse_prompt_logprobs(entries, ids, k, where)

    async def usable_k(self, wanted: int, probe_ids: list[int]) -> int:
        """The k this server grants (vLLM caps it at --max-logprobs), after one probe that also
        proves the server returns prompt logprobs at all."""
        body = {"model": self.model, "prompt": probe_ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": wanted}
        url = f"{self.base_url}/completions"
        async with self._semaphore:
            try:
                response = await self._client.post(url, json=body)
            except httpx.HTTPError as exc:
                raise RequestError(f"{url}: cannot connect ({exc}); is the server running?") from exc
        if response.status_code == 400 and (found := _MAX_ALLOWED.search(response.text)):
            return await self.usable_k(int(found.group(1)), probe_ids)
        if response.status_code != 200:
            raise NotMeasurable(f"{url} refused prompt_logprobs (HTTP {response.status_code}: {one_line(response.text)}): "
                                "divergence is not measurable there")
        try:
            choices = response.json().get("choices") or []
            entries = choices[0].get("prompt_logprobs")
        except (ValueError, AttributeError, IndexError, TypeError):
            entries = None
        if not isinstance(entries, list) or len(entries) < 2 or not isinstance(entries[1], dict):
            raise NotMeasurable(f"{url} returned no prompt_logprobs: divergence is not measurable there "
                                "(it needs prompt_logprobs on /v1/completions, as vLLM serves them)")
        return wanted

    async def greedy(self, ids: list[int], max_tokens: int) -> Continuation:
        """A greedy continuation of ``ids``, as token ids."""
        body = {"model": self.model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
                "return_token_ids": True}
        data = await self._post(f"{self.base_url}/completions", body)
        assert data is not None
        choice = (data.get("choices") or [{}])[0]
        token_ids = choice.get("token_ids")
        if not isinstance(token_ids, list):
            raise RequestError(f"{self.base_url}/completions returned no token_ids: generation drift needs "
                               "return_token_ids (vLLM)")
        return Continuation([int(t) for t in token_ids], choice.get("finish_reason"), str(choice.get("text") or ""))
