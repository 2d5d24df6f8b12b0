"""Shared fixtures: the scripted checkpoint and ONE real vLLM server on it for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("BENCH_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
os.environ.setdefault("BENCH_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("HUMANEVAL_OVERRIDE_PATH", str(DATA_DIR / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"))


def vllm_python() -> str:
    """The interpreter with vLLM: BENCH_VLLM_PYTHON, else the repo's .vllm-venv (made by scripts/setup.sh)."""
    candidate = os.environ.get("BENCH_VLLM_PYTHON") or str(REPO / ".vllm-venv" / "bin" / "python")
    if not Path(candidate).exists():
        pytest.fail(f"no vLLM interpreter at {candidate}: run scripts/setup.sh or set BENCH_VLLM_PYTHON")
    return candidate


def bench_cmd() -> list[str]:
    return [sys.executable, "-m", "bench.cli"]


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.engine.toys.builders import build_scripted

    return build_scripted(tmp_path_factory.mktemp("models") / "scripted")


@pytest.fixture(scope="session")
def scripted_server(scripted_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real vLLM server on the scripted model, launched the way `bench run` launches it (4096 tokens of
    context: the agent pack's tool schemas take up to 2.3k)."""
    from bench.serve.launch import LaunchConfig, serving
    from bench.serve.model_info import choose_parsers, read_checkpoint
    from bench.serve.options import ServeOptions

    info = read_checkpoint(scripted_model)
    logs = tmp_path_factory.mktemp("server")
    config = LaunchConfig(
        model=scripted_model, served_model_name="scripted", parsers=choose_parsers(info),
        serve=ServeOptions(python=vllm_python(), max_model_len=4096), cache_root=logs / "cache",
    )
    with serving(config, logs / "server.log") as server:
        yield server.base_url


EXTERNAL_PACK = """
from bench.pack import Item, Pack, Score

class EchoPack(Pack):
    name = "echo"
    version = "7"
    subdimensions = ("said",)

    def items(self, tier="full"):
        return [Item(id="one", data={"text": "hello"}), Item(id="two", data={"text": "bye"})]

    def messages(self, item):
        return [{"role": "user", "content": item.data["text"]}]

    def score(self, item, transcript):
        ok = bool(transcript.final_content)
        return Score(value=float(ok), passed=ok, subscores={"said": float(ok)})
"""


def install_echo_pack(tmp_path: Path) -> Path:
    """Build and pip-install (into a target dir) a pack package that lives outside this repo."""
    source = tmp_path / "bench-echo"
    (source / "bench_echo").mkdir(parents=True)
    (source / "bench_echo" / "__init__.py").write_text(EXTERNAL_PACK)
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "bench-echo"
        version = "0.1"
        [project.entry-points."bench.packs"]
        echo = "bench_echo:EchoPack"
    """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True)
    return site
