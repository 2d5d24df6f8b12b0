"""The gate's verdict as files a CI job reads: Markdown (job summary, PR comment), JUnit XML, JSON."""

from __future__ import annotations

from pathlib import Path

from bench.compare.gate import GateResult
from bench.errors import UserError
from bench.report.templates import template_environment


def render_markdown(result: GateResult) -> str:
    """A job summary / PR comment: verdict, warnings, every rule."""
    return template_environment().get_template("gate.md.j2").render(result=result)


def render_junit(result: GateResult) -> str:
    """JUnit XML with one test case per rule."""
    return template_environment().get_template("junit.xml.j2").render(result=result)


def write_outputs(
    result: GateResult, *, markdown: Path | None = None, junit: Path | None = None, json_path: Path | None = None
) -> None:
    """Write whichever of the Markdown, JUnit and JSON files were asked for."""
    for path, text in (
        (markdown, render_markdown(result) if markdown else ""),
        (junit, render_junit(result) if junit else ""),
        (json_path, result.model_dump_json(indent=2) + "\n" if json_path else ""),
    ):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror}") from exc
