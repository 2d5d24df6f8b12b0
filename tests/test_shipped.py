"""Shipped gate specs, plans and templates are found by name through the installed package."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.candidate.plan import load_plan
from bench.compare.spec import load_spec
from bench.errors import UserError
from bench.shipped import plan_names, resolve_plan, resolve_spec, spec_names, template_text


def test_specs_and_plans_are_listed_and_load() -> None:
    assert {"default", "strict"} <= set(spec_names())
    assert {"demo", "sweep"} <= set(plan_names())
    for name in spec_names():
        assert load_spec(resolve_spec(name)).packs, name
    for name in plan_names():
        assert load_plan(resolve_plan(name)).prune.ratios, name


def test_a_path_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text("version: 1\npacks: {}\n", encoding="utf-8")
    assert resolve_spec("default") == Path("default")
    assert resolve_spec(None).name == "default.yaml" and resolve_spec(None).parent != tmp_path
    assert resolve_spec("strict.yaml").name == "strict.yaml"


def test_unknown_name_is_one_line_listing_what_ships(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^gate spec stritc not found: .*\(default, strict\)$"):
        resolve_spec("stritc")
    with pytest.raises(UserError, match=r"^plan nested/demo not found"):
        resolve_plan("nested/demo")  # a path that is not a file is never read as a name


def test_templates_are_package_data() -> None:
    assert "{%" in template_text("report.html.j2")
    with pytest.raises(UserError, match="missing from the installed bench package"):
        template_text("nope.j2")
