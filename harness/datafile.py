"""Read a user's YAML or JSON file (gate spec, plan, calibration mix) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bench.errors import UserError


def load_data_file(path: Path, what: str, hint: str = "") -> Any:
    """Parse ``path`` as JSON (``.json``) or YAML; a missing, unreadable or malformed file is a UserError.

    ``what`` names the file in messages ("gate spec", "plan"); ``hint`` says where examples live.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"{what} {path} not found{': ' + hint if hint else ''}") from exc
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from exc
    as_json = path.suffix == ".json"
    try:
        return json.loads(text) if as_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{what} {path} is not valid {'JSON' if as_json else 'YAML'}: {first_line}") from exc
