"""Agent tasks: multi-step tool use in stateful environments the pack owns, scored on the end state."""

from bench.packs.agent.pack import AgentPack

__all__ = ["AgentPack"]
