"""The wheel as a user gets it: one import package, every shipped file, and a CLI that works from it.

The checkout maps folders onto ``bench`` (pyproject's ``package-dir``) and lists packages by hand,
so a package or data file left out of the wheel passes every test run from the checkout. Here the
wheel is built, read, and installed into a fresh virtualenv outside the checkout; the harness's
dependencies come from the test interpreter's site-packages through a ``.pth`` line (no network,
no reinstall), which does not run that environment's editable finder, so ``bench`` can only come
from the wheel.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from rundirs import write_run

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "bench"
TIMEOUT_S = 120


def _setuptools_config() -> dict:  # type: ignore[type-arg]
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]  # type: ignore[no-any-return]


def _package_dirs() -> dict[str, Path]:
    return {name: REPO / folder for name, folder in _setuptools_config()["package-dir"].items()}


def _dotted(folder: Path, roots: dict[str, Path]) -> str | None:
    """The package name a folder installs as: its deepest mapped root plus the path below it."""
    owners = [(name, root) for name, root in roots.items() if folder == root or root in folder.parents]
    if not owners:
        return None
    name, root = max(owners, key=lambda owner: len(owner[1].parts))
    return ".".join([name, *folder.relative_to(root).parts])


def _source_folder(package: str, roots: dict[str, Path]) -> Path:
    """Where a listed package's files are in the checkout (the inverse of :func:`_dotted`)."""
    name = max((n for n in roots if package == n or package.startswith(n + ".")), key=len)
    return roots[name].joinpath(*package.removeprefix(name).lstrip(".").split(".")) if package != name else roots[name]


def _shipped_sources() -> dict[str, Path]:
    """Wheel path -> checkout file, for every module and package-data file of the listed packages."""
    config = _setuptools_config()
    roots = _package_dirs()
    data = config.get("package-data", {})
    shipped = {}
    for package in config["packages"]:
        folder = _source_folder(package, roots)
        patterns = ["*.py", *data.get("*", []), *data.get(package, [])]
        for pattern in patterns:
            for path in folder.glob(pattern):
                if path.is_file():
                    shipped[str(PurePosixPath(*package.split("."), *path.relative_to(folder).parts))] = path
    return shipped


# ---------------------------------------------------------------------------------------------
# pyproject's package list


def test_pyproject_lists_every_package_folder() -> None:
    roots = _package_dirs()
    found = set(roots)  # bench.templates and bench.baselines hold data only, no __init__.py
    unpackaged = []
    for root in roots.values():
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            name = _dotted(folder, roots)
            if (folder / "__init__.py").is_file() and name is not None:
                found.add(name)
            elif any(folder.glob("*.py")):
                unpackaged.append(str(folder.relative_to(REPO)))
    listed = _setuptools_config()["packages"]
    assert len(listed) == len(set(listed)), "pyproject lists a package twice"
    assert sorted(listed) == sorted(found), "pyproject's [tool.setuptools] packages must match the package folders"
    assert unpackaged == [], "folders with modules but no __init__.py are left out of the wheel"


# ---------------------------------------------------------------------------------------------
# The wheel


@dataclass
class Installed:
    wheel: Path
    names: list[str]
    venv: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.venv / "bin" / "bench"


def _run(args: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _require_setuptools() -> None:
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        pytest.fail("setuptools is not installed: pip install -e '.[dev]' (or 'setuptools>=68')")
    if int(version.split(".")[0]) < 68:
        pytest.fail(f"setuptools {version} is too old to build bench: pip install 'setuptools>=68'")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from the checkout, installed (no -e, no deps) into a fresh virtualenv."""
    _require_setuptools()
    work = tmp_path_factory.mktemp("packaging")
    assert not work.is_relative_to(REPO)
    # setuptools builds inside the tree it is given and never empties build/lib, so a module
    # deleted from the checkout would still ship; build and egg-info go to a fresh folder instead.
    config = work / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {work / 'build'}\n[egg_info]\negg_base = {work}\n", encoding="utf-8")
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(config), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, REPO], env=env)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel], env=env)
    site = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # Only now make the dependencies importable: a plain path line, so .venv's own .pth hooks
    # (its editable finder for the checkout among them) are not run.
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "bench-test-deps.pth").write_text("".join(f"{path}\n" for path in deps), encoding="utf-8")
    return Installed(wheel=wheel, names=names, venv=venv, site_packages=site)


def test_wheel_holds_one_import_package_and_every_shipped_file(installed: Installed) -> None:
    names = installed.names
    top = {name.split("/")[0] for name in names}
    dist_info = [name for name in top if name.endswith(".dist-info")]
    assert len(dist_info) == 1 and top - set(dist_info) == {PACKAGE}, sorted(top)

    files = {name for name in names if name.startswith(f"{PACKAGE}/")}

    def matching(pattern: str) -> list[str]:
        return [name for name in files if fnmatch.fnmatch(name, pattern)]

    assert f"{PACKAGE}/py.typed" in files
    assert {f"{PACKAGE}/baselines/default.yaml", f"{PACKAGE}/baselines/strict.yaml"} <= files
    for pattern in ("templates/*.j2", "baselines/plans/*.yaml", "schemas/*.json", "engine/*recipes/*.yaml"):
        assert matching(f"{PACKAGE}/{pattern}"), f"no {pattern} in the wheel"
    for pack in sorted(p for p in (REPO / "packs").iterdir() if (p / "__init__.py").is_file()):
        for data_file in ("items.jsonl", "item.schema.json"):
            if (pack / data_file).is_file():
                assert f"{PACKAGE}/packs/{pack.name}/{data_file}" in files

    expected = _shipped_sources()
    assert sorted(set(expected) - files) == [], "files of listed packages missing from the wheel"
    roots = _package_dirs()
    stale = []
    for name in sorted(files):
        path = PurePosixPath(name)
        package = ".".join(path.parent.parts)
        owner = max((n for n in roots if package == n or package.startswith(n + ".")), key=len, default=None)
        if owner is None or not (_source_folder(owner, roots) / path.relative_to(PurePosixPath(*owner.split(".")))).is_file():
            stale.append(name)
    assert stale == [], "wheel files with no source in the checkout"


def test_fresh_venv_imports_bench_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    probe = "import bench, importlib.metadata as m; print(bench.__file__); print(m.distribution('bench').locate_file(''))"
    lines = _run([installed.python, "-c", probe], cwd=tmp_path, env=_cli_env()).stdout.split()
    module, dist = Path(lines[0]), Path(lines[1])
    assert module.is_relative_to(installed.site_packages) and not module.is_relative_to(REPO)
    assert dist.is_relative_to(installed.venv)


# ---------------------------------------------------------------------------------------------
# The installed CLI, run outside the checkout


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # a pack whose data is missing says so at once


def _bench(installed: Installed, how: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    command: list[str | Path] = [installed.script] if how == "script" else [installed.python, "-m", PACKAGE]
    assert not cwd.is_relative_to(REPO)
    return subprocess.run([str(a) for a in [*command, *args]], capture_output=True, text=True, cwd=cwd,
                          env=_cli_env(), timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def stored_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    return write_run(root, "base", n_per_pack=60), write_run(root, "cand", n_per_pack=60, regress={"toolcall": 0.4})


@pytest.mark.parametrize("how", ["script", "module"])
def test_packs_lists_the_installed_packs(installed: Installed, tmp_path: Path, how: str) -> None:
    proc = _bench(installed, how, "packs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for pack in ("toolcall", "bugfind", "dataextract", "instructfollow", "smoke"):
        assert pack in proc.stdout


def test_gate_with_the_shipped_default_spec_writes_markdown_and_junit(
    installed: Installed, stored_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, cand = stored_runs
    proc = _bench(installed, "script", "gate", cand, "--baseline", base, "--markdown", "gate.md", "--junit", "gate.xml",
                  "--json", "gate.json", cwd=tmp_path)
    result = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    assert result["verdict"] == "FailToolcall" and proc.returncode == 1, proc.stderr
    assert Path(result["spec_source"]).is_relative_to(installed.site_packages)
    assert Path(result["spec_source"]).name == "default.yaml"
    assert result["verdict"] in proc.stdout
    assert f"**{result['verdict']}**" in (tmp_path / "gate.md").read_text(encoding="utf-8")
    cases = ET.parse(tmp_path / "gate.xml").getroot().iter("testcase")
    assert [case.get("name") for case in cases] == [rule["id"] for rule in result["rules"]]


def test_gate_with_the_shipped_strict_spec_by_name(installed: Installed, stored_runs: tuple[Path, Path], tmp_path: Path) -> None:
    base, cand = stored_runs
    proc = _bench(installed, "module", "gate", cand, "--baseline", base, "--spec", "strict", "--json", "gate.json", cwd=tmp_path)
    result = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    # strict.yaml is total: it names packs these two-pack runs never ran, so the verdict is Invalid.
    assert proc.returncode == 2 and result["verdict"] == "Invalid", proc.stderr
    assert any("is not in the candidate run" in reason for reason in result["invalid_reasons"]), result["invalid_reasons"]
    spec = Path(result["spec_source"])
    assert spec.name == "strict.yaml" and spec.is_relative_to(installed.site_packages)


def test_report_renders_from_the_installed_templates(installed: Installed, stored_runs: tuple[Path, Path], tmp_path: Path) -> None:
    base, cand = stored_runs
    proc = _bench(installed, "script", "report", base, cand, "--out", "report.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "base" in html and "cand" in html and "bench report: base vs cand" in html
