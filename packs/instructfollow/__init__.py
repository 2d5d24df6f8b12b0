"""Instruction following: prompts with verifiable instructions, scored strict and loose."""

from bench.packs.instructfollow.pack import InstructFollowPack

__all__ = ["InstructFollowPack"]
