"""The files of an output checkpoint beside its weights: ``config.json`` and what serving reads unchanged.

Pruning, quantization and the toy builders all write a new checkpoint directory; each must carry
the tokenizer, chat template and generation config over, or the result would serve differently.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Files beside the weights that a served checkpoint needs unchanged.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)


def copy_side_files(src: Path, dst: Path, *, skip: Iterable[str] = ()) -> list[str]:
    """Copy tokenizer, chat template and generation config files so the output serves the same way."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    skipped = set(skip)
    for name in SIDE_FILES:
        if name in skipped:
            continue
        source = src / name
        if source.is_file():
            shutil.copy2(source, dst / name)
            copied.append(name)
    return copied


def write_config(out_dir: Path, config: dict[str, Any]) -> None:
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
