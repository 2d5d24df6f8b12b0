"""Where MMLU rows come from: the ``cais/mmlu`` hub dataset, or local parquet files.

Users get the hub dataset (``all`` config; ``test`` to ask, ``dev`` for few-shot examples).
Offline machines and CI set ``BENCH_DATA_DIR`` to a folder holding ``mmlu/mmlu_all_test.parquet``
and ``mmlu/mmlu_all_dev.parquet`` (same columns). Both go through ``datasets`` so the rows have
one shape whichever way they came; rows are read once per process and kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from bench.errors import UserError

HUB_DATASET = "cais/mmlu"
HUB_CONFIG = "all"
DATA_DIR_ENV = "BENCH_DATA_DIR"

Split = Literal["test", "dev"]


@dataclass(frozen=True)
class Rows:
    """One split's rows plus the files they were read from (their hash goes into the manifest)."""

    rows: tuple[dict[str, Any], ...]
    files: tuple[Path, ...]
    source: str


def local_path(split: Split, data_dir: Path) -> Path:
    return data_dir / "mmlu" / f"mmlu_all_{split}.parquet"


def data_dir_from_env() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value) if value else None


def load_rows(split: Split, data_dir: Path | None) -> Rows:
    """The split's rows: from ``data_dir`` when given, else from the hub. Cached per process."""
    return _load_rows(split, str(data_dir) if data_dir is not None else None)


@cache
def _load_rows(split: Split, data_dir: str | None) -> Rows:
    import datasets  # heavy; only when MMLU is actually asked for

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a progress bar per split is noise in a run's output
    try:
        return _read(datasets, split, data_dir)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _read(datasets: Any, split: Split, data_dir: str | None) -> Rows:
    if data_dir is not None:
        path = local_path(split, Path(data_dir))
        if not path.is_file():
            raise UserError(
                f"MMLU {split} split not found at {path}; set {DATA_DIR_ENV} to a folder holding "
                f"mmlu/mmlu_all_{split}.parquet, or unset it to load {HUB_DATASET} from the hub"
            )
        try:
            dataset = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
        except Exception as exc:  # a truncated or foreign file: say which one
            raise UserError(f"cannot read MMLU parquet {path}: {exc}") from exc
        files: tuple[Path, ...] = (path,)
        source = str(path)
    else:
        try:
            dataset = datasets.load_dataset(HUB_DATASET, HUB_CONFIG, split=split)
        except Exception as exc:
            raise UserError(
                f"cannot load {HUB_DATASET} ({HUB_CONFIG}, {split}) from the hub: {exc}. Offline? set "
                f"{DATA_DIR_ENV} to a folder holding mmlu/mmlu_all_{split}.parquet"
            ) from exc
        files = tuple(Path(entry["filename"]) for entry in dataset.cache_files)
        source = f"hf://{HUB_DATASET}/{HUB_CONFIG}/{split}"
    missing = {"question", "subject", "choices", "answer"} - set(dataset.column_names)
    if missing:
        raise UserError(f"MMLU data {source} lacks column(s) {sorted(missing)}; expected the cais/mmlu layout")
    return Rows(rows=tuple(dataset.to_list()), files=files, source=source)
