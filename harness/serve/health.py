"""Scan every reply for signs of a broken serving stack.

Preflight proves the stack once; this scan keeps proving it on every response, because a
template or parser problem can show only on some prompts. Counts go into results.json and a
run with leaked markers is marked invalid instead of being scored as if nothing happened.
"""

from __future__ import annotations

import re

from bench.records import Flags
from bench.transcript import Response, Transcript

# Markup that a reasoning or tool-call parser should have removed from content.
LEAK_PATTERN = re.compile(r"</?think>|<tool_call>|</tool_call>|<\|im_start\|>|<\|im_end\|>")


def scan_response(response: Response) -> Flags:
    content = response.content or ""
    reasoning = response.reasoning or ""
    flags = Flags()
    flags.leaked_markers = int(bool(LEAK_PATTERN.search(content)))
    opened = content.count("<think>") + reasoning.count("<think>")
    closed = content.count("</think>") + reasoning.count("</think>")
    flags.unclosed_think = int(opened > closed)
    flags.null_content = int(response.content is None and not response.tool_calls)
    flags.truncated = int(response.finish_reason == "length")
    return flags


def scan_transcript(transcript: Transcript) -> Flags:
    total = Flags()
    for exchange in transcript.exchanges:
        found = scan_response(exchange.response)
        total.leaked_markers += found.leaked_markers
        total.unclosed_think += found.unclosed_think
        total.null_content += found.null_content
        total.truncated += found.truncated
    return total
