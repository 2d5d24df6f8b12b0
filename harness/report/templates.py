"""The Jinja2 environment over the shipped templates, autoescaping HTML and XML."""

from __future__ import annotations

from functools import cache

import jinja2

from bench.shipped import template_text


def _autoescape(template_name: str | None) -> bool:
    """Escape HTML and XML templates (``x.html.j2``, ``x.xml.j2``); Markdown is escaped by hand."""
    return template_name is not None and (".html" in template_name or ".xml" in template_name)


def markdown_cell(value: object) -> str:
    """Text safe inside a Markdown table cell: no pipes, no raw HTML, one line."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("&", "&amp;").replace("<", "&lt;")  # no tag can open; a lone ">" is inert mid-line


def number(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A figure for a table cell; ``-`` when there is none."""
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


@cache
def template_environment() -> jinja2.Environment:
    """Templates come from the installed package (``bench.templates``), so a wheel install finds them."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(template_text),
        autoescape=_autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = markdown_cell
    env.filters["num"] = number
    return env
