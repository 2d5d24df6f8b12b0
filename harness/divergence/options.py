"""How a divergence measurement is made: the one declaration behind ``bench diverge`` flags and a
candidate plan's ``divergence:`` section (defaults live here and nowhere else)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DivergenceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tier: Literal["quick", "full"] = Field(
        default="full", description="'full' (every text, 60 per domain) or 'quick' (12 per domain)")
    limit: int | None = Field(default=None, ge=1, description="at most this many texts per domain")
    domains: list[str] = Field(default_factory=list, description="measure only these domains (default: all)")
    texts: str | None = Field(default=None, description="a JSON-lines text set of your own instead of the shipped one")
    top_k: int = Field(default=20, ge=1, description="logprobs per position (vLLM grants at most its --max-logprobs, 20 by default)")
    max_text_tokens: int = Field(default=2048, ge=8, description="longer texts are cut to this many tokens")
    generate: int = Field(default=8, ge=0, description="prompts per domain continued greedily for generation drift (0: none)")
    max_new_tokens: int = Field(default=128, ge=1, description="tokens per greedy continuation")
    concurrency: int = Field(default=8, ge=1, description="requests in flight")
    request_timeout_s: float = Field(default=600.0, gt=0, description="seconds one request may take")
    seed: int = Field(default=0, description="seed of the bootstrap intervals")
