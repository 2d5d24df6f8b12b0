"""A small website to browse: pages with links, a site search, and forms that validate what is sent.

The browser keeps a current page and a history, as a person clicking through would. Forms check
their fields (required, options, number ranges, formats) and per-form limits (a room that seats
four) and answer with the field that is wrong; an accepted form returns a confirmation number.
"""

from __future__ import annotations

import re
from typing import Any

from bench.packs.agent.environment import Environment, ToolError, tool

LINK = re.compile(r"\[([^\]]+)\]\((/[^)\s]*)\)")
FORMATS = {"email": r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "date": r"^\d{4}-\d{2}-\d{2}$", "time": r"^\d{2}:\d{2}$"}
SNIPPET = 120


def links_of(body: str) -> list[dict[str, str]]:
    """The links written in a page body as ``[text](/url)``."""
    return [{"text": text, "url": url} for text, url in LINK.findall(body)]


def _field_problem(name: str, rules: dict[str, Any], value: Any) -> str | None:
    kind = rules.get("type", "text")
    if kind == "integer":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name} must be a whole number"
        if "min" in rules and value < rules["min"]:
            return f"{name} must be at least {rules['min']}"
        if "max" in rules and value > rules["max"]:
            return f"{name} must be at most {rules['max']}"
        return None
    if kind == "checkbox":
        return None if isinstance(value, bool) else f"{name} must be true or false"
    if not isinstance(value, str) or not value.strip():
        return f"{name} must be a non-empty text"
    if "options" in rules and value not in rules["options"]:
        return f"{name} must be one of: {', '.join(rules['options'])}"
    if kind in FORMATS and not re.match(FORMATS[kind], value):
        return f"{name} must be a valid {kind}"
    return None


class Website(Environment):
    name = "website"
    summary = "a web browser on the Harbor Makerspace website"

    @property
    def pages(self) -> dict[str, dict[str, Any]]:
        pages: dict[str, dict[str, Any]] = self.state.setdefault("pages", {})
        return pages

    def _show(self, url: str) -> dict[str, Any]:
        page = self.pages.get(url)
        if page is None:
            raise ToolError("not_found", f"404: no page at {url}")
        history: list[str] = self.state.setdefault("history", [])
        history.append(url)
        return {"url": url, "title": page["title"], "text": page["body"], "links": links_of(page["body"]),
                "forms": page.get("forms", [])}

    @tool("Open a page of the site by its path, e.g. / or /events.",
          {"url": {"type": "string", "pattern": "^/", "description": "Path on the site, starting with /"}}, required=["url"])
    def open_page(self, url: str) -> dict[str, Any]:
        return self._show(url.split("#")[0].rstrip("/") or "/")

    @tool("Follow a link on the current page by its text.", {"link_text": {"type": "string", "minLength": 1}}, required=["link_text"])
    def follow_link(self, link_text: str) -> dict[str, Any]:
        history: list[str] = self.state.setdefault("history", [])
        if not history:
            raise ToolError("validation_error", "no page is open yet; open_page first")
        links = links_of(self.pages[history[-1]]["body"])
        wanted = link_text.casefold().strip()
        exact = [link for link in links if link["text"].casefold() == wanted]
        near = exact or [link for link in links if wanted in link["text"].casefold()]
        if not near:
            names = "; ".join(link["text"] for link in links)
            raise ToolError("not_found", f"no link {link_text!r} on {history[-1]}; the links are: {names}")
        return self._show(near[0]["url"])

    @tool("Go back to the previous page.")
    def go_back(self) -> dict[str, Any]:
        history: list[str] = self.state.setdefault("history", [])
        if len(history) < 2:
            raise ToolError("validation_error", "there is no previous page")
        history.pop()
        return self._show(history.pop())

    @tool("Search the site's pages for words.", {"query": {"type": "string", "minLength": 2}}, required=["query"])
    def search_site(self, query: str) -> dict[str, Any]:
        words = query.casefold().split()
        results = []
        for url, page in sorted(self.pages.items()):
            text = (page["title"] + " " + page["body"]).casefold()
            if all(word in text for word in words):
                body = LINK.sub(r"\1", page["body"])
                results.append({"url": url, "title": page["title"], "snippet": " ".join(body.split())[:SNIPPET]})
        return {"results": results}

    @tool("Show a form's fields and their rules.", {"form_id": {"type": "string", "minLength": 1}}, required=["form_id"])
    def view_form(self, form_id: str) -> dict[str, Any]:
        form = self._form(form_id)
        return {"form_id": form_id, "title": form["title"], "fields": form["fields"], "notes": form.get("notes", "")}

    @tool(
        "Fill in and submit a form. values maps each field name to its value.",
        {"form_id": {"type": "string", "minLength": 1}, "values": {"type": "object"}},
        required=["form_id", "values"],
    )
    def submit_form(self, form_id: str, values: dict[str, Any]) -> dict[str, Any]:
        form = self._form(form_id)
        fields: dict[str, dict[str, Any]] = form["fields"]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ToolError("validation_error", f"the form has no field {unknown[0]!r}; its fields: {', '.join(fields)}")
        for name, rules in fields.items():
            if name not in values:
                if rules.get("required", False):
                    raise ToolError("validation_error", f"{name} is required")
                continue
            problem = _field_problem(name, rules, values[name])
            if problem:
                raise ToolError("validation_error", problem)
        for limit in form.get("limits", []):
            if all(values.get(key) == wanted for key, wanted in limit["when"].items()):
                if int(values.get(limit["field"], 0)) > limit["max"]:
                    raise ToolError("validation_error", limit["message"])
        clean = {name: int(v) if fields[name].get("type") == "integer" and isinstance(v, str) else v for name, v in values.items()}
        confirmation = self.next_id("submission", "CONF-")
        submissions: list[dict[str, Any]] = self.state.setdefault("submissions", [])
        submissions.append({"id": confirmation, "form": form_id, "values": clean})
        return {"confirmation": confirmation, "message": form.get("thanks", "Thank you, your form was received.")}

    def _form(self, form_id: str) -> dict[str, Any]:
        form = self.state.setdefault("forms", {}).get(form_id)
        if form is None:
            raise ToolError("not_found", f"no form {form_id!r}")
        result: dict[str, Any] = form
        return result
