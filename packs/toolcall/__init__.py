"""Tool calling through the OpenAI ``tools`` API: which tool, which arguments, when not to call,
and using a tool's result in the next step."""

from bench.packs.toolcall.pack import ToolCallPack

__all__ = ["ToolCallPack"]
