"""A project workspace: files to list, search, read, edit, move and delete, and a test runner.

"Running the tests" executes nothing: each test in the state is a list of predicates over file
contents (this text is present, that text is gone, this file exists) with the failure message a
real test would print. The checker is the environment's own, so the outcome is deterministic.
"""

from __future__ import annotations

from typing import Any

from bench.packs.agent.environment import Environment, ToolError, tool

PATH = {"type": "string", "description": "File path relative to the project root, e.g. src/app/main.py", "minLength": 1}
MAX_MATCHES = 40


def _test_passes(test: dict[str, Any], files: dict[str, str]) -> bool:
    for check in test.get("checks", []):
        text = files.get(check["path"])
        if "exists" in check and (text is not None) != check["exists"]:
            return False
        if "has" in check and (text is None or check["has"] not in text):
            return False
        if "lacks" in check and text is not None and check["lacks"] in text:
            return False
    return True


class Workspace(Environment):
    name = "workspace"
    summary = "a software project's workspace (files and a test runner)"

    @property
    def files(self) -> dict[str, str]:
        files: dict[str, str] = self.state.setdefault("files", {})
        return files

    def _read(self, path: str) -> str:
        if path not in self.files:
            raise ToolError("not_found", f"no file {path!r}; list_files shows the files that exist")
        return self.files[path]

    @tool("List the files of the project, optionally only those under a folder.",
          {"folder": {"type": "string", "description": "Folder prefix such as 'src/'; empty for every file"}})
    def list_files(self, folder: str = "") -> dict[str, Any]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        found = sorted(path for path in self.files if path.startswith(prefix))
        if prefix and not found:
            raise ToolError("not_found", f"no folder {folder!r}")
        return {"files": found}

    @tool("Read a whole file.", {"path": PATH}, required=["path"])
    def read_file(self, path: str) -> dict[str, Any]:
        return {"path": path, "content": self._read(path)}

    @tool("Find the lines that contain a text (case-sensitive), in every file or under a folder.",
          {"text": {"type": "string", "minLength": 1}, "folder": {"type": "string"}}, required=["text"])
    def search_files(self, text: str, folder: str = "") -> dict[str, Any]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        matches = [
            {"path": path, "line": number, "text": line}
            for path in sorted(self.files) if path.startswith(prefix)
            for number, line in enumerate(self.files[path].split("\n"), start=1) if text in line
        ]  # fmt: skip
        return {"matches": matches[:MAX_MATCHES], "total": len(matches)}

    @tool("Create a file or replace its whole content.", {"path": PATH, "content": {"type": "string"}}, required=["path", "content"])
    def write_file(self, path: str, content: str) -> dict[str, Any]:
        created = path not in self.files
        self.files[path] = content
        return {"path": path, "created": created, "characters": len(content)}

    @tool(
        "Replace one exact piece of text in a file. old_text must occur exactly once in the file.",
        {"path": PATH, "old_text": {"type": "string", "minLength": 1}, "new_text": {"type": "string"}},
        required=["path", "old_text", "new_text"],
    )
    def edit_file(self, path: str, old_text: str, new_text: str) -> dict[str, Any]:
        content = self._read(path)
        count = content.count(old_text)
        if count == 0:
            raise ToolError("validation_error", f"old_text does not occur in {path}; read the file and copy the text exactly")
        if count > 1:
            raise ToolError("conflict", f"old_text occurs {count} times in {path}; include more surrounding text so it is unique")
        self.files[path] = content.replace(old_text, new_text, 1)
        return {"path": path, "replaced": 1}

    @tool("Delete a file.", {"path": PATH}, required=["path"])
    def delete_file(self, path: str) -> dict[str, Any]:
        self._read(path)
        protected: list[str] = self.state.get("protected", [])
        if path in protected:
            raise ToolError("forbidden", f"{path} is protected and cannot be deleted")
        del self.files[path]
        return {"deleted": path}

    @tool("Move or rename a file.", {"source": PATH, "destination": PATH}, required=["source", "destination"])
    def move_file(self, source: str, destination: str) -> dict[str, Any]:
        content = self._read(source)
        if destination in self.files:
            raise ToolError("conflict", f"{destination} already exists")
        del self.files[source]
        self.files[destination] = content
        return {"moved": source, "to": destination}

    @tool("Run the project's test suite, or only the tests whose name contains a text.",
          {"name": {"type": "string", "description": "Part of a test name; empty runs every test"}})
    def run_tests(self, name: str = "") -> dict[str, Any]:
        tests: dict[str, dict[str, Any]] = self.state.get("tests", {})
        chosen = {test_name: test for test_name, test in sorted(tests.items()) if name in test_name}
        if not chosen:
            raise ToolError("not_found", f"no test name contains {name!r}")
        failing = {test_name for test_name, test in chosen.items() if not _test_passes(test, self.files)}
        failed = [{"test": test_name, "message": chosen[test_name]["message"]} for test_name in sorted(failing)]
        passed = [test_name for test_name in chosen if test_name not in failing]
        self.state["last_test_run"] = {"filter": name, "passed": passed, "failed": [f["test"] for f in failed]}
        return {"passed": len(passed), "failed": failed, "summary": f"{len(passed)} passed, {len(failed)} failed"}
