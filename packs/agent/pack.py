"""The agent pack: multi-step tasks in five stateful environments, scored on the end state.

Each task runs in a fresh environment the pack owns (a project workspace, a shop's order system,
a calendar and mailbox, a website, an issue tracker with CI). The model calls tools through the
OpenAI tools API; the pack executes each call against the environment and answers with its
result, until the model answers without a tool call, the step cap is reached, or a reply runs
out of tokens. A scripted user answers clarifying questions. The scorer replays the recorded
tool calls against a fresh environment, so a stored run is re-scored offline exactly.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.client import RequestFailed
from bench.errors import UserError
from bench.pack import Item, JsonlPack, Sampling, Score, round_robin
from bench.packs.agent.environment import world_file
from bench.packs.agent.episode import ENVIRONMENTS, Episode, schema_problem
from bench.packs.agent.scoring import score_transcript
from bench.packs.agent.spec import CallCheck, TaskSpec, Trajectory, WrongTrajectory, band_for
from bench.session import Session
from bench.transcript import Transcript

DEFAULT_MAX_STEPS = 20
TODAY = "Tuesday, 10 June 2025"
SYSTEM = (
    "You are an assistant working in {summary} through the tools provided. Today is {today}. "
    "Do what the user asks by calling the tools. Look things up before you change them, and change nothing "
    "the user did not ask for. If you need something that only the user knows, ask them. When the work is "
    "done, reply without a tool call and tell the user what you did, with the ids, names, dates and amounts "
    "that matter."
)
# A later turn whose conversation outgrew the server's context: the episode's token budget is spent.
CONTEXT_FULL = re.compile(r"HTTP 400\b.*(context length|maximum model length|max_model_len|too long)", re.IGNORECASE)


class AgentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_steps: int = Field(DEFAULT_MAX_STEPS, ge=1, le=200)  # model replies per task: --pack-option agent.max_steps=N


class AgentPack(JsonlPack):
    """Tool-using agent tasks over deterministic in-process environments."""

    name = "agent"
    version = "1"
    description = (
        "Multi-step agent tasks in five stateful environments (workspace, shop, calendar and mail, website, "
        "issue tracker with CI), with injected API failures and a scripted user; scored on the end state."
    )
    subdimensions = ("task_success", "state_correctness", "efficiency", "recovery", "safety", "communication")
    breakdowns = ("difficulty", "environment")
    default_sampling = Sampling(temperature=0.0, max_tokens=1024)
    hashed_files = ("items.jsonl", "item.schema.json", *(world_file(name) for name in sorted(ENVIRONMENTS)))
    Options = AgentOptions

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS, data_path: Path | None = None) -> None:
        super().__init__(data_path)
        self.max_steps = max_steps

    def check_items(self, items: list[Item]) -> None:
        for item in items:
            check_item(item, self.items_path)

    def groups(self, item: Item) -> dict[str, str]:
        spec = TaskSpec.model_validate(item.data)
        return {"difficulty": spec.difficulty, "environment": spec.env}

    def limit(self, items: list[Item], n: int, seed: int) -> list[Item]:
        """Take items round-robin over environments (seeded order within each), so a small
        ``--limit`` still visits every environment."""
        by_env: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            by_env[item.data["env"]].append(item)
        return round_robin([group for _, group in sorted(by_env.items())], n, seed)

    def messages(self, item: Item) -> list[dict[str, Any]]:
        spec = TaskSpec.model_validate(item.data)
        summary = ENVIRONMENTS[spec.env].summary
        return [
            {"role": "system", "content": SYSTEM.format(summary=summary, today=TODAY)},
            {"role": "user", "content": spec.instruction},
        ]

    def tools(self, item: Item) -> list[dict[str, Any]]:
        env = ENVIRONMENTS[item.data["env"]]
        return [spec.openai() for spec in env.tools.values()]

    async def run_item(self, item: Item, session: Session) -> None:
        """Ask, execute the reply's tool calls (or let the scripted user answer), ask again: up to ``max_steps`` replies."""
        episode = Episode(TaskSpec.model_validate(item.data))
        tools = self.tools(item)
        reply = await session.ask(self.messages(item), tools=tools, tool_choice="auto")
        for step in range(1, self.max_steps + 1):
            answer = episode.respond(reply)
            if answer.ends:
                return
            for index, (call, text) in enumerate(answer.tool_results):
                session.add_tool_result(call, text, index)
            if answer.user is not None:
                session.add_user(answer.user)
            if step == self.max_steps:
                return
            try:
                reply = await session.ask(tools=tools, tool_choice="auto")
            except RequestFailed as exc:
                if CONTEXT_FULL.search(str(exc)):
                    return  # the conversation no longer fits: scored on what was done, with no final answer
                raise

    def score(self, item: Item, transcript: Transcript) -> Score:
        reference_calls = Trajectory.model_validate(item.reference).call_count()  # check_items makes sure there is one
        return score_transcript(TaskSpec.model_validate(item.data), reference_calls, transcript)


def check_item(item: Item, where: object) -> None:
    """What the schema cannot say: trajectories are well formed, tools exist, the band fits the reference."""
    spec = TaskSpec.model_validate(item.data)
    env = ENVIRONMENTS[spec.env]

    def fail(what: str) -> None:
        raise UserError(f"{where}: item {item.id!r}: {what}")

    if item.reference is None or not item.wrong:
        fail("needs a reference trajectory and at least one wrong one")
    try:
        reference = Trajectory.model_validate(item.reference)
        for wrong in item.wrong:
            WrongTrajectory.model_validate(wrong)
    except ValidationError as exc:
        fail(f"bad trajectory ({str(exc).splitlines()[0]})")
        return
    tools_named = [f.tool for f in spec.failures] + [f.recovered_by for f in spec.failures if f.recovered_by]
    tools_named += [name for check in spec.required_calls for name in check.tools]
    tools_named += [name for mine in spec.minefields if isinstance(mine, CallCheck) for name in mine.tools]
    for name in tools_named:
        if name not in env.tools:
            fail(f"names tool {name!r}, which {spec.env} does not have")
    for turn in reference.turns:
        for call in turn.tool_calls:
            if call.name not in env.tools:
                fail(f"reference calls {call.name!r}, which {spec.env} does not have")
            problem = schema_problem(spec.env, call.name, call.arguments)
            if problem:
                fail(f"reference call {call.name} has arguments its schema refuses ({problem})")
    if reference.turns[-1].tool_calls or not (reference.turns[-1].content or "").strip():
        fail("the reference must end with a final answer (content, no tool calls)")
    if band_for(reference.call_count()) != spec.difficulty:
        fail(f"difficulty {spec.difficulty!r} but the reference makes {reference.call_count()} calls "
             f"(band {band_for(reference.call_count())!r})")
    if not spec.gold and not spec.required_calls:
        fail("declares neither a gold end state nor required calls")
