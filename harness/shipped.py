"""Files that ship inside the package: gate specs, candidate plans and templates.

They are package data (``bench.baselines``, ``bench.templates``), read through
``importlib.resources`` so that a plain wheel install finds them; nothing here depends on
where the source tree is. Users' own baselines live in a folder of theirs (``--baselines-dir``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from bench.errors import UserError

SPECS = "bench.baselines"
TEMPLATES = "bench.templates"
PLANS_FOLDER = "plans"
# Where `bench baseline save` stores a user's own baselines and `bench gate --baseline NAME` finds them.
USER_BASELINES_DIR = Path("baselines")


def _folder(package: str, sub: str = "") -> Traversable:
    root = resources.files(package)
    return root / sub if sub else root


def _yaml_names(folder: Traversable) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def spec_names() -> list[str]:
    """Names of the shipped gate specs (``default``, ``strict``, ...)."""
    return _yaml_names(_folder(SPECS))


def plan_names() -> list[str]:
    """Names of the shipped candidate plans (``demo``, ``sweep``, ...)."""
    return _yaml_names(_folder(SPECS, PLANS_FOLDER))


def _as_path(entry: Traversable) -> Path:
    # pip installs wheels onto the file system, so a shipped file is a real path there.
    return Path(str(entry))


def spec_path(name: str) -> Path | None:
    """The shipped gate spec called ``name`` (with or without ``.yaml``), or None."""
    entry = _folder(SPECS) / f"{name.removesuffix('.yaml')}.yaml"
    return _as_path(entry) if entry.is_file() else None


def plan_path(name: str) -> Path | None:
    """The shipped candidate plan called ``name`` (with or without ``.yaml``), or None."""
    entry = _folder(SPECS, PLANS_FOLDER) / f"{name.removesuffix('.yaml')}.yaml"
    return _as_path(entry) if entry.is_file() else None


def resolve_spec(value: str | Path | None) -> Path:
    """A gate spec file from ``--spec``: a path, or the name of a shipped spec; None is the shipped ``default``."""
    if value is None:
        shipped = spec_path("default")
        if shipped is None:
            raise UserError("the shipped gate spec 'default' is missing from the installed bench package: reinstall bench")
        return shipped
    return _resolve("gate spec", value, spec_path, spec_names())


def resolve_plan(value: str | Path) -> Path:
    """A candidate plan from ``--plan``: a path, or the name of a shipped plan (``demo``, ``sweep``)."""
    return _resolve("plan", value, plan_path, plan_names())


def _resolve(what: str, value: str | Path, shipped_path: Callable[[str], Path | None], names: list[str]) -> Path:
    path = Path(value).expanduser()
    if path.is_file():
        return path
    shipped = shipped_path(str(value)) if path.parent == Path(".") else None
    if shipped is not None:
        return shipped
    raise UserError(f"{what} {value} not found: give a YAML or JSON file, or a shipped {what} name "
                    f"({', '.join(names) or 'none installed'})")


def template_text(name: str) -> str:
    """The text of a shipped Jinja2 template (``report.html.j2``, ``gate.md.j2``, ``junit.xml.j2``)."""
    entry = _folder(TEMPLATES) / name
    if not entry.is_file():
        raise UserError(f"template {name} is missing from the installed bench package: reinstall bench")
    return entry.read_text(encoding="utf-8")
