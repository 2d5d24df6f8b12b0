"""JSON Schemas of the run directory files, generated from the pydantic models in bench.records.

The checked-in ``*.schema.json`` files are what other tools read; ``python -m bench.schemas``
regenerates them and a test fails when they drift from the models.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel

from bench.records import ItemRecord, Manifest, Results

HERE = Path(__file__).parent
MODELS: dict[str, type[BaseModel]] = {"manifest": Manifest, "item": ItemRecord, "results": Results}


def generate(name: str) -> dict[str, Any]:
    schema = MODELS[name].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def path_of(name: str) -> Path:
    return HERE / f"{name}.schema.json"


@cache
def validator(name: str) -> Draft202012Validator:
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return Draft202012Validator(json.loads(text))


def write_all() -> None:
    for name in MODELS:
        path_of(name).write_text(json.dumps(generate(name), indent=2, sort_keys=True) + "\n", encoding="utf-8")

