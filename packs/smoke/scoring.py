"""Scores only what the serving stack guarantees: a non-empty answer, a parsed tool call."""

from __future__ import annotations

from typing import Any

from bench.pack import Score, unscorable
from bench.transcript import Transcript


def judge(data: dict[str, Any], transcript: Transcript) -> Score:
    """``say`` items need non-empty content; tool items need a ``get_weather`` call first."""
    if (bad := unscorable(transcript)) is not None:
        return bad
    if data["kind"] == "say":
        ok = bool(transcript.final_content.strip())
        return Score(value=float(ok), passed=ok, subscores={"answers": float(ok)},
                     reason="answered" if ok else "empty answer")
    first = transcript.exchanges[0].response
    called = [c.name for c in first.tool_calls]
    ok = "get_weather" in called
    return Score(value=float(ok), passed=ok, subscores={"tool_use": float(ok)},
                 reason=f"called {called}" if called else "no tool call")
