"""An issue tracker with CI: issues, comments, labels, assignees, pipeline runs and their logs.

A rerun of a CI job gets the outcome the world declares for it (``ci.rerun_outcomes``): a flaky
job passes on rerun, a real failure fails again, so "rerun until green" is not a strategy here.
"""

from __future__ import annotations

from typing import Any

from bench.packs.agent.environment import Environment, ToolError, tool

NUMBER = {"type": "integer", "minimum": 1, "description": "Issue number"}
LABELS = {"type": "array", "items": {"type": "string", "minLength": 1}}
RUN_ID = {"type": "string", "pattern": "^run-[0-9]+$"}
LOG_TAIL = 12


class Tracker(Environment):
    name = "tracker"
    summary = "the team's issue tracker and CI service for the 'relay' repository"

    def _table(self, name: str) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = self.state.setdefault(name, {})
        return table

    def _issue(self, number: int) -> dict[str, Any]:
        issue = self._table("issues").get(str(number))
        if issue is None:
            raise ToolError("not_found", f"no issue #{number}")
        return issue

    def _run(self, run_id: str) -> dict[str, Any]:
        run = self._table("runs").get(run_id)
        if run is None:
            raise ToolError("not_found", f"no CI run {run_id}")
        return run

    @tool("Search issues by words in the title or body.",
          {"query": {"type": "string"}, "state": {"type": "string", "enum": ["open", "closed", "all"]}})
    def search_issues(self, query: str = "", state: str = "open") -> dict[str, Any]:
        words = query.casefold().split()
        found = [
            {"number": int(number), "title": i["title"], "state": i["state"], "labels": i["labels"], "assignee": i.get("assignee")}
            for number, i in self._table("issues").items()
            if (state == "all" or i["state"] == state) and all(w in (i["title"] + " " + i["body"]).casefold() for w in words)
        ]
        return {"issues": sorted(found, key=lambda i: i["number"])}

    @tool("Get one issue with its body and comments.", {"number": NUMBER}, required=["number"])
    def get_issue(self, number: int) -> dict[str, Any]:
        return {"number": number, **self._issue(number)}

    @tool("Open a new issue.", {"title": {"type": "string", "minLength": 5}, "body": {"type": "string", "minLength": 1}, "labels": LABELS},
          required=["title", "body"])
    def create_issue(self, title: str, body: str, labels: list[str] | None = None) -> dict[str, Any]:
        self._known_labels(labels or [])
        number = int(self.next_id("issue", ""))
        self._table("issues")[str(number)] = {"title": title, "body": body, "state": "open", "labels": sorted(set(labels or [])),
                                              "assignee": None, "comments": [], "close_reason": None}
        return {"number": number, "state": "open"}

    @tool("Add a comment to an issue.", {"number": NUMBER, "body": {"type": "string", "minLength": 1}}, required=["number", "body"])
    def comment_on_issue(self, number: int, body: str) -> dict[str, Any]:
        comments: list[dict[str, Any]] = self._issue(number)["comments"]
        comments.append({"author": self.state.get("me", "you"), "body": body})
        return {"number": number, "comments": len(comments)}

    @tool(
        "Close an issue with a reason; a duplicate names the issue it duplicates.",
        {"number": NUMBER, "reason": {"type": "string", "enum": ["completed", "not_planned", "duplicate"]}, "duplicate_of": NUMBER},
        required=["number", "reason"],
    )
    def close_issue(self, number: int, reason: str, duplicate_of: int | None = None) -> dict[str, Any]:
        issue = self._issue(number)
        if issue["state"] == "closed":
            raise ToolError("conflict", f"issue #{number} is already closed")
        if reason == "duplicate":
            if duplicate_of is None:
                raise ToolError("validation_error", "a duplicate must name duplicate_of")
            if duplicate_of == number:
                raise ToolError("validation_error", "an issue cannot duplicate itself")
            self._issue(duplicate_of)
        issue.update(state="closed", close_reason=reason, duplicate_of=duplicate_of)
        return {"number": number, "state": "closed", "reason": reason}

    @tool(
        "Change an issue's labels or assignee (assignee: a member's username, or empty to unassign).",
        {"number": NUMBER, "add_labels": LABELS, "remove_labels": LABELS, "assignee": {"type": "string"}},
        required=["number"],
    )
    def edit_issue(self, number: int, add_labels: list[str] | None = None, remove_labels: list[str] | None = None,
                   assignee: str | None = None) -> dict[str, Any]:
        issue = self._issue(number)
        self._known_labels(add_labels or [])
        if assignee:
            if assignee not in self._table("members"):
                raise ToolError("validation_error", f"{assignee!r} is not a member; list_members shows the usernames")
        labels = (set(issue["labels"]) | set(add_labels or [])) - set(remove_labels or [])
        issue["labels"] = sorted(labels)
        if assignee is not None:
            issue["assignee"] = assignee or None
        return {"number": number, "labels": issue["labels"], "assignee": issue.get("assignee")}

    @tool("List the team's members: username, name, role and whether they are on call.")
    def list_members(self) -> dict[str, Any]:
        return {"members": [{"username": user, **m} for user, m in sorted(self._table("members").items())]}

    @tool("List CI runs, newest first, optionally for one branch.", {"branch": {"type": "string"}})
    def list_ci_runs(self, branch: str = "") -> dict[str, Any]:
        runs = [
            {"id": rid, "branch": r["branch"], "commit": r["commit"], "status": r["status"], "started": r["started"]}
            for rid, r in self._table("runs").items() if not branch or r["branch"] == branch
        ]  # fmt: skip
        return {"runs": sorted(runs, key=lambda r: (r["started"], r["id"]), reverse=True)}

    @tool("Get a CI run with each job's status and the end of its log.", {"run_id": RUN_ID}, required=["run_id"])
    def get_ci_run(self, run_id: str) -> dict[str, Any]:
        run = self._run(run_id)
        jobs = {name: {"status": job["status"], "log": "\n".join(job.get("log", "").split("\n")[-LOG_TAIL:])}
                for name, job in run["jobs"].items()}
        return {"id": run_id, "branch": run["branch"], "commit": run["commit"], "status": run["status"], "jobs": jobs}

    @tool("Rerun one job of a CI run; the rerun is a new run.", {"run_id": RUN_ID, "job": {"type": "string", "minLength": 1}},
          required=["run_id", "job"])
    def rerun_ci_job(self, run_id: str, job: str) -> dict[str, Any]:
        run = self._run(run_id)
        if job not in run["jobs"]:
            raise ToolError("not_found", f"run {run_id} has no job {job!r}; its jobs: {', '.join(run['jobs'])}")
        outcomes: dict[str, dict[str, str]] = self.state.get("rerun_outcomes", {})
        outcome = outcomes.get(f"{run_id}/{job}", {"status": run["jobs"][job]["status"], "log": run["jobs"][job].get("log", "")})
        new_id = self.next_id("run", "run-")
        jobs = {name: dict(j) for name, j in run["jobs"].items()}
        jobs[job] = {"status": outcome["status"], "log": outcome.get("log", "")}
        status = "passed" if all(j["status"] == "passed" for j in jobs.values()) else "failed"
        self._table("runs")[new_id] = {"branch": run["branch"], "commit": run["commit"], "status": status,
                                       "started": self.state.get("now", ""), "jobs": jobs, "rerun_of": run_id}
        return {"run_id": new_id, "job": job, "job_status": outcome["status"], "run_status": status}

    def _known_labels(self, labels: list[str]) -> None:
        known: list[str] = self.state.get("labels", [])
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ToolError("validation_error", f"unknown label {unknown[0]!r}; the labels are: {', '.join(known)}")
