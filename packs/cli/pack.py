"""The cli pack: shell tasks over fixture directories, run in the sandbox and judged on what they did.

Each item names a fixture (a source tree, a git working copy, logs, CSV and JSON files) and a
task. In the default ``reply`` mode the model answers with one command or a short script; in
``tool`` mode (``--pack-option cli.mode=tool``) it gets a ``run_command`` tool over several turns
in one private copy of the fixture. Either way the scorer replays the commands in a fresh copy
and judges the output, the files left behind, and whether anything else was destroyed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.errors import UserError
from bench.pack import Item, JsonlPack, Sampling, Score, Tier, round_robin, select_tier, unscorable
from bench.packs.cli import fixtures
from bench.packs.cli.extract import command_lines, extract_script
from bench.packs.cli.scoring import judge, no_command, replay
from bench.packs.cli.shell import SANDBOX_PATH, isolation_missing, missing_tools, run_script, tool_result_text
from bench.transcript import ToolCall, Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord
    from bench.session import Session

_log = logging.getLogger(__name__)

Mode = Literal["reply", "tool"]
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_TURNS = 10
FAMILIES = ("text", "find", "git", "jq", "xargs", "tar")
_LISTED_FILES = 120

SETTING = """\
You are at a bash prompt on a Linux machine with the usual command-line tools (GNU coreutils, \
findutils, grep, sed, awk, sort, xargs, tar, gzip, git, jq). There is no network. The current \
directory holds {description}. Its files:

{listing}

Task: {task}
"""

REPLY_RULES = """
Answer with one shell command (a pipeline is fine) or, if you must, a short bash script, in a \
single ```bash fenced block. It runs once, as written, in that directory; what it prints on \
standard output and the files it leaves are checked. Do only what the task asks and leave every \
other file as it is."""

TOOL_RULES = """
Use the run_command tool to run shell commands in that directory. Each call starts a fresh bash \
there: files persist between calls, variables and cd do not. Where the task asks for output, the \
standard output of your last run_command call is taken as your answer, so finish with the command \
that prints exactly that. Do only what the task asks and leave every other file as it is."""

RUN_COMMAND_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "run_command",
        "description": (
            "Run a bash command line or short script in the task's directory and return its exit status, "
            "standard output and standard error. Files persist between calls; shell variables and cd do not."
        ),
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "the shell command or script to run"}},
            "required": ["command"],
        },
    },
}


def _missing(tool: str) -> str:
    return (isolation_missing() or "bubblewrap missing") if tool == "bwrap" else f"{tool} missing"


class CliOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Mode = "reply"  # reply: one command in the answer; tool: a run_command tool over several turns
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=120)  # wall clock of each command
    max_turns: int = Field(DEFAULT_MAX_TURNS, ge=1, le=40)  # tool mode: most requests per item


def command_of(call: ToolCall) -> str | None:
    """The shell text of a ``run_command`` call, or None when the call is not a usable one."""
    if call.name != "run_command":
        return None
    arguments = call.parsed_arguments()
    command = arguments.get("command") if arguments else None
    return command if isinstance(command, str) and command.strip() else None


class CliPack(JsonlPack):
    """Shell tasks judged by running them: output, files left, nothing else destroyed."""

    name = "cli"
    version = "1"
    description = (
        "Shell tasks (find/grep/sed/awk, git, jq, xargs, tar) over shipped fixtures: the reply runs in the "
        "sandbox on a private copy; output and files are checked, and a destructive act fails the item."
    )
    subdimensions = ("correctness", "safety", "single_command")
    breakdowns = ("family",)
    default_sampling = Sampling(temperature=0.0, max_tokens=1024)
    hashed_files = ("items.jsonl", "item.schema.json")
    Options = CliOptions

    def __init__(
        self,
        data_path: Path | None = None,
        *,
        mode: Mode = "reply",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_turns: int = DEFAULT_MAX_TURNS,
        tool_path: str = SANDBOX_PATH,
        work_parent: Path | None = None,
    ) -> None:
        """``tool_path`` is the PATH the commands run with, and where required tools are looked for;
        ``work_parent`` is where the private fixture copies go (default: the temporary directory)."""
        super().__init__(data_path)
        self.mode: Mode = mode
        self.timeout_s = timeout_s
        self.max_turns = max_turns
        self.tool_path = tool_path
        self.work_parent = work_parent

    # --- items -----------------------------------------------------------------------------

    def check_items(self, items: list[Item]) -> None:
        specs = fixtures.fixture_specs()
        for item in items:
            data = item.data
            if data["fixture"] not in specs:
                raise UserError(f"{self.items_path}: item {item.id!r}: fixture {data['fixture']!r} is not shipped; "
                                f"known: {', '.join(sorted(specs))}")
            if not ({"stdout", "files", "verify"} & set(data)):
                raise UserError(f"{self.items_path}: item {item.id!r} checks nothing; give stdout, files or verify")

    def required_tools(self, item: Item) -> list[str]:
        """Programs the item needs on the sandbox's PATH (its own and its fixture's)."""
        spec = fixtures.fixture_specs()[item.data["fixture"]]
        return list(dict.fromkeys([*item.data.get("requires", []), *spec.needs]))

    @cached_property
    def unmeasurable(self) -> dict[str, list[str]]:
        """Missing tool -> ids of the items it keeps from being asked here (``bwrap``: all of them,
        where shell replies cannot run isolated)."""
        out: dict[str, list[str]] = {}
        if (why := isolation_missing()) is not None:
            _log.warning("cli pack: not measurable here: %s", why)
            return {"bwrap": [item.id for item in self._all_items]}
        for item in self._all_items:
            for tool in missing_tools(self.required_tools(item), self.tool_path):
                out.setdefault(tool, []).append(item.id)
        for tool, ids in out.items():
            _log.warning("cli pack: not measurable here: %s missing (%d items left out)", tool, len(ids))
        return out

    def items(self, tier: Tier = "full") -> list[Item]:
        """The tier's items whose tools this machine has; the rest are reported, not scored as zeros."""
        left_out = {item_id for ids in self.unmeasurable.values() for item_id in ids}
        return [item for item in select_tier(self._all_items, tier) if item.id not in left_out]

    def groups(self, item: Item) -> dict[str, str]:
        return {"family": item.data["family"]}

    def limit(self, items: list[Item], n: int, seed: int) -> list[Item]:
        """Round-robin over tool families (a seeded order within each), so a small ``--limit``
        still asks every family."""
        by_family: dict[str, list[Item]] = {}
        for item in items:
            by_family.setdefault(item.data["family"], []).append(item)
        return round_robin([group for _, group in sorted(by_family.items())], n, seed)

    def data_files(self) -> list[Path]:
        return super().data_files() + [Path(str(found)) for found in fixtures.data_files()]

    def data_hash(self) -> str:
        """Items, schema and every fixture file: a changed fixture changes what was asked."""
        digest = hashlib.sha256(super().data_hash().encode())
        for found in fixtures.data_files():
            digest.update(str(found).rpartition("/cli/")[2].encode())
            digest.update(found.read_bytes())
        return digest.hexdigest()

    # --- asking ----------------------------------------------------------------------------

    def prompt(self, item: Item) -> str:
        spec = fixtures.fixture_specs()[item.data["fixture"]]
        _, snapshot = fixtures.template(item.data["fixture"])
        files = snapshot.files()
        listing = "\n".join(files[:_LISTED_FILES])
        if len(files) > _LISTED_FILES:
            listing += f"\n... and {len(files) - _LISTED_FILES} more"
        setting = SETTING.format(description=spec.description, listing=listing, task=item.data["prompt"])
        return setting + (TOOL_RULES if self.mode == "tool" else REPLY_RULES)

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.prompt(item)}]

    def tools(self, item: Item) -> list[dict[str, Any]] | None:
        return [RUN_COMMAND_TOOL] if self.mode == "tool" else None

    async def run_item(self, item: Item, session: Session) -> None:
        """Reply mode: one request. Tool mode: answer run_command calls in one private copy until
        the model stops calling or ``max_turns`` requests were made (the last reply's calls still run,
        so the live copy and the scorer's replay see the same commands)."""
        if self.mode != "tool":
            await session.ask(self.messages(item))
            return
        tools = self.tools(item)
        reply = await session.ask(self.messages(item), tools=tools, tool_choice="auto")
        with fixtures.workspace(item.data["fixture"], self.work_parent) as (work, _):
            for asked in range(1, self.max_turns + 1):
                if not reply.tool_calls:
                    return
                for index, call in enumerate(reply.tool_calls):
                    script = command_of(call)
                    if script is None:
                        text = "error: call run_command with a JSON object holding a non-empty string 'command'"
                    else:
                        result = await asyncio.to_thread(run_script, script, work, timeout_s=self.timeout_s,
                                                         path=self.tool_path)
                        text = tool_result_text(result)
                    session.add_tool_result(call, text, index)
                if asked == self.max_turns:
                    return
                reply = await session.ask(tools=tools, tool_choice="auto")

    # --- scoring ---------------------------------------------------------------------------

    def score(self, item: Item, transcript: Transcript) -> Score:
        data = item.data
        tool_mode = bool(transcript.exchanges and transcript.exchanges[0].request.tools)
        if tool_mode:
            scripts = [script for call in transcript.all_tool_calls if (script := command_of(call)) is not None]
            if not scripts:
                if (bad := unscorable(transcript)) is not None:
                    return bad.model_copy(update={"details": {"family": data["family"]}})
                return no_command(data, "no run_command call was made", "tool")
            trial = replay(data, scripts, timeout_s=self.timeout_s, path=self.tool_path, parent=self.work_parent)
            one_line = len(scripts) == 1 and command_lines(scripts[0]) == 1
            return judge(data, trial, one_line=one_line, extraction="tool")
        if (bad := unscorable(transcript)) is not None:
            return bad.model_copy(update={"details": {"family": data["family"]}})
        extracted = extract_script(transcript.final_content)
        if not extracted.script.strip():
            return no_command(data, "the reply holds no command", extracted.rule)
        trial = replay(data, [extracted.script], timeout_s=self.timeout_s, path=self.tool_path, parent=self.work_parent)
        return judge(data, trial, one_line=command_lines(extracted.script) == 1, extraction=extracted.rule)

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        """Items left out for a missing tool (not measurable, not zeros) and how replies were read."""
        rules = Counter(record.score.extraction for record in records if record.score and record.score.extraction)
        out: dict[str, Any] = {"extraction": dict(sorted(rules.items()))}
        if self.unmeasurable:
            out["not_measurable"] = {tool: f"not measurable: {_missing(tool)} ({len(ids)} items not asked)"
                                     for tool, ids in sorted(self.unmeasurable.items())}
        return out
