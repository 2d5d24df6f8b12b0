"""HumanEval+ problems and their expected outputs, both from evalplus.

evalplus reads ``HUMANEVAL_OVERRIDE_PATH`` once, at import; users without it get evalplus's own
release download. Offline machines and CI point ``BENCH_DATA_DIR`` (or the override variable
itself) at a local copy; this module sets the override before evalplus is first imported and also
on the already-imported module, so the order of imports never decides which file is read.

Expected outputs come from evalplus's ``get_groundtruth`` (run once, cached by evalplus under its
cache folder). That cache holds every task in one 250 MB pickle; each task's share is split out
once into its own small file, so a sandboxed check reads only what its task needs.
"""

from __future__ import annotations

import os
import pickle
import stat
import sys
import threading
from contextlib import redirect_stdout
from functools import cache
from pathlib import Path
from typing import Any

from bench.errors import UserError

DATA_DIR_ENV = "BENCH_DATA_DIR"
OVERRIDE_ENV = "HUMANEVAL_OVERRIDE_PATH"
CACHE_DIR_ENV = "BENCH_CACHE_DIR"
LOCAL_NAME = Path("humanevalplus") / "HumanEvalPlus-v0.1.10.jsonl.gz"
PAYLOAD_LAYOUT = "1"  # bump when the per-task payload's keys change

_lock = threading.Lock()


def configure_source() -> Path | None:
    """Point evalplus at a local HumanEval+ file when the environment names one.

    ``HUMANEVAL_OVERRIDE_PATH`` wins; else ``$BENCH_DATA_DIR/humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz``;
    else None (evalplus downloads its release).
    """
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    data_dir = os.environ.get(DATA_DIR_ENV, "").strip()
    if override:
        path = Path(override)
        hint = f"fix {OVERRIDE_ENV}"
    elif data_dir:
        path = Path(data_dir) / LOCAL_NAME
        hint = f"set {DATA_DIR_ENV} to a folder holding {LOCAL_NAME}, or unset it to download the release"
    else:
        return None
    if not path.is_file():
        raise UserError(f"HumanEval+ data not found at {path}; {hint}")
    os.environ[OVERRIDE_ENV] = str(path)
    module = sys.modules.get("evalplus.data.humaneval")
    if module is not None:  # imported before the variable was set: it captured the old value
        module.HUMANEVAL_OVERRIDE_PATH = str(path)  # type: ignore[attr-defined]
    return path


@cache
def problems() -> dict[str, dict[str, Any]]:
    """evalplus's HumanEval+ problems by task id (prompt, entry point, inputs, canonical solution)."""
    configure_source()
    from evalplus.data import get_human_eval_plus

    try:
        with redirect_stdout(sys.stderr):  # evalplus prints download progress
            return dict(get_human_eval_plus())
    except Exception as exc:
        raise UserError(
            f"cannot load HumanEval+ through evalplus: {exc}. Offline? set {DATA_DIR_ENV} to a folder "
            f"holding {LOCAL_NAME}"
        ) from exc


@cache
def dataset_hash() -> str:
    """evalplus's own hash of the data file; it also names evalplus's expected-output cache."""
    configure_source()
    from evalplus.data import get_human_eval_plus_hash

    return str(get_human_eval_plus_hash())


def data_file() -> Path | None:
    """The file the problems were read from (for the manifest's data hash)."""
    configure_source()
    from evalplus.data.humaneval import _ready_human_eval_plus_path

    path = Path(_ready_human_eval_plus_path())
    return path if path.is_file() else None


def cache_root() -> Path:
    """Where per-task payloads live: ``$BENCH_CACHE_DIR`` or a folder under ``/var/tmp``.

    Not under the home directory: the sandbox hides it (and gives the code a private ``/tmp``),
    and the sandboxed checker must read its task's payload. Files are made readable by others
    because a sandbox started as root runs the code under a throw-away uid.
    """
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    base = Path(configured) if configured else Path("/var/tmp") / f"bench-cache-{os.getuid()}"
    return base / "humanevalplus"


def _private_enough(path: Path) -> None:
    """Refuse a cache folder someone else owns or can write: its pickles decide the grades."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UserError(
            f"code pack cache {path} is owned by someone else or writable by others; "
            f"set {CACHE_DIR_ENV} to a folder of your own"
        )


def payload_dir() -> Path:
    return cache_root() / f"{dataset_hash()}-{PAYLOAD_LAYOUT}"


def payload_name(task_id: str) -> str:
    return task_id.replace("/", "_") + ".pkl"


def payload_path(task_id: str) -> Path:
    """The file holding one task's inputs and expected outputs, built on first need."""
    directory = payload_dir()
    if not (directory / "complete").is_file():
        with _lock:
            if not (directory / "complete").is_file():
                try:
                    _write_payloads(directory)
                except OSError as exc:
                    raise UserError(
                        f"cannot write the code pack's cache {directory} ({exc.strerror or exc}); set "
                        f"{CACHE_DIR_ENV} to a writable folder outside the home directory"
                    ) from exc
    return directory / payload_name(task_id)


def reference_times(task_id: str) -> dict[str, list[float]]:
    """Ground-truth run times per input (they set evalplus's per-test time limits)."""
    return _times()[task_id]


@cache
def _times() -> dict[str, dict[str, list[float]]]:
    with (payload_dir() / "times.pkl").open("rb") as handle:
        return dict(pickle.load(handle))


def _write_payloads(directory: Path) -> None:
    """Split evalplus's expected outputs into one pickle per task (atomic per file)."""
    from evalplus.evaluate import get_groundtruth

    all_problems = problems()
    with redirect_stdout(sys.stderr):  # "Computing expected output..." is evalplus's, not ours
        expected = get_groundtruth(all_problems, dataset_hash(), [])
    for folder in (directory.parent.parent, directory.parent, directory):
        if not folder.is_dir():
            folder.mkdir(mode=0o755)
            folder.chmod(0o755)  # whatever the umask: the sandbox's uid must pass through
        _private_enough(folder)
    times: dict[str, dict[str, list[float]]] = {}
    for task_id, problem in all_problems.items():
        oracle = expected[task_id]
        payload = {
            "task_id": task_id,
            "entry_point": problem["entry_point"],
            "atol": problem["atol"],
            "base_input": problem["base_input"],
            "plus_input": problem["plus_input"],
            "base": oracle["base"],
            "base_time": oracle["base_time"],
            "plus": oracle["plus"],
            "plus_time": oracle["plus_time"],
        }
        _atomic_pickle(directory / payload_name(task_id), payload)
        times[task_id] = {"base": list(oracle["base_time"]), "plus": list(oracle["plus_time"])}
    _atomic_pickle(directory / "times.pkl", times)
    (directory / "complete").write_text("ok\n")


def _atomic_pickle(path: Path, value: Any) -> None:
    partial = path.with_suffix(f".{os.getpid()}.part")
    with partial.open("wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.chmod(0o644)
    partial.replace(path)
