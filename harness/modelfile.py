"""A JSON file checked against a pydantic model, failing with one line that names the first bad field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from bench.datafile import load_data_file
from bench.errors import UserError

M = TypeVar("M", bound=BaseModel)


def read_model_file(path: Path, model: type[M], what: str) -> M:
    """Parse ``path`` and validate it as ``model``; ``what`` names the file in messages.

    Raises:
        UserError: the file is missing, unreadable, not JSON, or not shaped like ``model``.
    """
    try:
        raw = load_data_file(path, what)
    except UnicodeDecodeError as exc:  # binary garbage where JSON should be
        raise UserError(f"{what} {path} is not valid JSON: not UTF-8 text") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        raise UserError(f"{what} {path}: {where}: {first['msg']}") from exc
