"""A git history built from the pack's own description (``repo.json``), with fixed authors and dates.

A nested ``.git`` cannot ship inside a wheel, so the repository is made when its fixture is first
built: ``git init``, then each step of the description (commit, tag, branch, switch), then the
uncommitted changes of the working tree. Fixed author and committer dates make every build the
same commits with the same ids. This is the pack's own data, run once per process on a fresh
folder; the git the model's command talks to runs only inside the sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.packs.cli.blobs import repeated_bytes

_PERSON = re.compile(r"^(?P<name>[^<]+?)\s*<(?P<email>[^>]+)>$")


def git_env(home: Path) -> dict[str, str]:
    """An environment in which no user or system git configuration applies."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }


def build_repo(description: Mapping[str, Any], dest: Path, *, fixed_mtime: int) -> None:
    """Turn ``dest`` into the repository ``description`` names (``dest`` may hold other files)."""
    git = shutil.which("git", path="/usr/local/bin:/usr/bin:/bin")
    if git is None:
        raise UserError("the cli pack's git fixture needs git on PATH (install git, or leave out the git items)")
    env = git_env(dest)
    runner = _Git(git, dest, env)
    branch = str(description.get("branch", "main"))
    runner("init", "-q", "--template=", "-b", branch)  # no sample hooks: fewer files to copy per run
    runner("config", "user.name", "inkwell")
    runner("config", "user.email", "inkwell@example.org")
    runner("config", "commit.gpgsign", "false")
    last_date = "2024-01-01T00:00:00+00:00"
    for step in description["steps"]:
        if "commit" in step:
            last_date = _commit(runner, dest, step["commit"], fixed_mtime)
        elif "tag" in step:
            runner("tag", step["tag"], when=last_date)
        elif "branch" in step:
            runner("switch", "-q", "-c", step["branch"])
        elif "switch" in step:
            runner("switch", "-q", step["switch"])
        else:
            raise UserError(f"repo.json: unknown step {sorted(step)}; expected commit, tag, branch or switch")
    # One pack instead of a loose file per object: every run copies and removes the repository.
    runner("repack", "-a", "-d", "-q")
    runner("prune-packed", "-q")
    for rel, content in description.get("worktree", {}).get("files", {}).items():
        _put(dest / rel, content)


class _Git:
    def __init__(self, git: str, cwd: Path, env: dict[str, str]) -> None:
        self.git, self.cwd, self.env = git, cwd, env

    def __call__(self, *args: str, when: str | None = None, person: tuple[str, str] | None = None) -> None:
        env = dict(self.env)
        if when is not None:
            env |= {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        if person is not None:
            name, email = person
            env |= {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                    "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        done = subprocess.run([self.git, *args], cwd=self.cwd, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            raise UserError(f"building the cli pack's git fixture: git {' '.join(args)} failed: {done.stderr.strip()[-300:]}")


def _commit(runner: _Git, dest: Path, commit: Mapping[str, Any], fixed_mtime: int) -> str:
    match = _PERSON.match(str(commit["author"]))
    if match is None:
        raise UserError(f"repo.json: author {commit['author']!r} is not 'Name <email>'")
    for rel, content in commit["files"].items():
        if content is None:
            runner("rm", "-q", "--", rel)
        else:
            _put(dest / rel, content)
            os.utime(dest / rel, (fixed_mtime, fixed_mtime))
            runner("add", "--", rel)
    date = str(commit["date"])
    runner("commit", "-q", "-m", str(commit["message"]), when=date, person=(match["name"], match["email"]))
    return date


def _put(path: Path, content: str | Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(repeated_bytes(int(content["size"]), str(content["line"])))
