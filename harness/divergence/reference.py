"""The base's side of a divergence measurement, stored once so the base need not be served again.

A reference lives in a ``divergence/`` folder (inside the base's run directory, so ``bench baseline
save`` keeps it with the baseline, or any folder ``--out`` names):

- ``reference.json``: what was measured and how (model, k, text set and its hash, each text's token
  count, the base's greedy continuations for generation drift), validated on read;
- ``reference.npz``: every position's top-k token ids and logprobs and the actual token's logprob,
  concatenated over texts (no pickled objects: it is read with ``allow_pickle=False``);
- ``tokens.jsonl.gz``: each text's token ids and their decoded strings (the tokenizer check and the
  report's highlighted texts read these);
- ``texts.jsonl``: the texts themselves, so a candidate is measured on exactly these.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.divergence.endpoint import PromptLogprobs
from bench.divergence.texts import Text, parse_texts
from bench.errors import UserError

DIVERGENCE_DIR = "divergence"
REFERENCE_JSON = "reference.json"
REFERENCE_NPZ = "reference.npz"
TOKENS_FILE = "tokens.jsonl.gz"
TEXTS_FILE = "texts.jsonl"


class RefText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    domain: str
    tokens: int = Field(ge=2)  # measured tokens (after truncation); positions measured = tokens - 1
    truncated_from: int | None = None  # the text's full length when it was cut to fit


class RefGeneration(BaseModel):
    """The base's greedy continuation of one prompt."""

    model_config = ConfigDict(extra="forbid")
    id: str
    domain: str
    prompt_ids: list[int]
    token_ids: list[int]
    finish_reason: str | None


class ReferenceMeta(BaseModel):
    """``reference.json``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = 1
    kind: Literal["divergence-reference"] = "divergence-reference"
    created_at: str
    model: str
    checkpoint: str | None = None
    endpoint: str
    vllm_version: str | None = None
    max_model_len: int | None = None
    k: int = Field(ge=1)
    text_set: str
    text_set_sha256: str
    tier: str
    limit: int | None = None
    max_text_tokens: int
    generate_per_domain: int
    max_new_tokens: int
    texts: list[RefText]
    generations: list[RefGeneration] = Field(default_factory=list)
    arrays_sha256: str = ""
    tokens: int = 0
    seconds: float = 0.0

    def settings(self) -> dict[str, object]:
        """What decides the reference's content besides the base itself (a cache key for the loop)."""
        return self.model_dump(include={"k", "text_set_sha256", "tier", "limit", "max_text_tokens",
                                        "generate_per_domain", "max_new_tokens"})


@dataclass
class TextLogprobs:
    """One text measured on one server: its ids, decoded tokens and prompt logprobs."""

    text: Text
    token_ids: list[int]
    decoded: list[str]  # one per token, position 0 included
    logprobs: PromptLogprobs
    truncated_from: int | None = None


@dataclass
class Reference:
    """A loaded reference: its description, texts and per-text logprobs."""

    root: Path
    meta: ReferenceMeta
    texts: list[Text]
    measured: list[TextLogprobs]

    @property
    def sha256(self) -> str:
        return self.meta.arrays_sha256


def reference_dir(path: Path) -> Path | None:
    """The folder holding reference.json: ``path/divergence`` or ``path`` itself, else None."""
    for folder in (path / DIVERGENCE_DIR, path):
        if (folder / REFERENCE_JSON).is_file():
            return folder
    return None


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_reference(folder: Path, meta: ReferenceMeta, measured: list[TextLogprobs]) -> Path:
    """Write the four files; the arrays' hash goes into reference.json (written last, so a folder
    with a reference.json is complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REFERENCE_JSON).unlink(missing_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        top_ids=np.concatenate([m.logprobs.top_ids for m in measured]),
        top_lp=np.concatenate([m.logprobs.top_lp for m in measured]),
        actual_lp=np.concatenate([m.logprobs.actual_lp for m in measured]),
        token_ids=np.asarray([t for m in measured for t in m.token_ids], dtype=np.int32),
    )
    arrays = buffer.getvalue()
    _write_bytes(folder / REFERENCE_NPZ, arrays)
    tokens = "".join(json.dumps({"id": m.text.id, "ids": m.token_ids, "tokens": m.decoded}, ensure_ascii=False) + "\n"
                     for m in measured)
    _write_bytes(folder / TOKENS_FILE, gzip.compress(tokens.encode("utf-8"), mtime=0))
    texts = "".join(json.dumps(m.text.model_dump(exclude_none=True), ensure_ascii=False, sort_keys=True) + "\n"
                    for m in measured)
    _write_bytes(folder / TEXTS_FILE, texts.encode("utf-8"))
    meta.arrays_sha256 = hashlib.sha256(arrays).hexdigest()
    meta.tokens = sum(len(m.token_ids) for m in measured)
    _write_bytes(folder / REFERENCE_JSON, (meta.model_dump_json(indent=1) + "\n").encode("utf-8"))
    return folder


def read_meta(folder: Path) -> ReferenceMeta:
    path = folder / REFERENCE_JSON
    try:
        return ReferenceMeta.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "top level"
        raise UserError(f"{path}: field {where}: {error['msg']} (not a bench divergence reference?)") from exc


def load_reference(path: Path) -> Reference:
    """Read a reference from a run directory, a stored baseline or its divergence folder."""
    folder = reference_dir(path)
    if folder is None:
        raise UserError(f"{path} holds no divergence reference ({DIVERGENCE_DIR}/{REFERENCE_JSON}): make one with "
                        f"bench diverge --reference --model BASE --out {path}")
    meta = read_meta(folder)
    try:
        raw = (folder / REFERENCE_NPZ).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {folder / REFERENCE_NPZ}: {exc.strerror}") from exc
    if hashlib.sha256(raw).hexdigest() != meta.arrays_sha256:
        raise UserError(f"{folder / REFERENCE_NPZ} does not match the hash in {REFERENCE_JSON}: it was changed or "
                        "half-written; make the reference again")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
            top_ids: NDArray[np.int32] = arrays["top_ids"]
            top_lp: NDArray[np.float32] = arrays["top_lp"]
            actual_lp: NDArray[np.float32] = arrays["actual_lp"]
        lines = gzip.decompress((folder / TOKENS_FILE).read_bytes()).decode("utf-8").splitlines()
        texts = parse_texts((folder / TEXTS_FILE).read_text(encoding="utf-8").splitlines(), str(folder / TEXTS_FILE))
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise UserError(f"{folder}: the reference files are incomplete or unreadable ({exc}); make it again") from exc
    tokens = [json.loads(line) for line in lines]
    if not (len(tokens) == len(texts) == len(meta.texts)):
        raise UserError(f"{folder}: {len(meta.texts)} texts described, {len(texts)} stored, {len(tokens)} tokenized")
    measured = []
    row = 0
    for text, described, stored in zip(texts, meta.texts, tokens, strict=True):
        if not (text.id == described.id == stored["id"]) or len(stored["ids"]) != described.tokens:
            raise UserError(f"{folder}: text {described.id} is stored inconsistently; make the reference again")
        end = row + described.tokens - 1
        logprobs = PromptLogprobs(top_ids[row:end], top_lp[row:end], actual_lp[row:end], stored["tokens"][1:])
        measured.append(TextLogprobs(text, [int(t) for t in stored["ids"]], list(stored["tokens"]), logprobs,
                                     described.truncated_from))
        row = end
    if row != top_ids.shape[0]:
        raise UserError(f"{folder}: {top_ids.shape[0]} stored positions, {row} described; make the reference again")
    return Reference(folder, meta, texts, measured)
