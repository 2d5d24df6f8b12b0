"""The scripted user: fixed answers to clarifying questions, so a task means the same on every run.

No model plays the user. A reply without tool calls that asks something (has a '?') gets the
answer of every rule one of whose keywords it names, each rule at most once, in the order the
rules are declared; a reply that names none ends the episode.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.packs.agent.spec import UserRule


class ScriptedUser:
    """Answers questions from a task's rules; the state is which rules are used up."""

    def __init__(self, rules: Sequence[UserRule]) -> None:
        self._unused = list(rules)

    def answer(self, text: str | None) -> str | None:
        """The user's reply to the model's message ``text``, or None when the user has nothing to say."""
        if not text or "?" not in text:
            return None
        lowered = text.casefold()
        matched = [rule for rule in self._unused if any(keyword.casefold() in lowered for keyword in rule.keywords)]
        for rule in matched:
            self._unused.remove(rule)
        return " ".join(rule.reply for rule in matched) or None
