"""Calibration: adapters render rows through the chat template; the preflight catches schema drift fast."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.engine.planning.calibration import (
    build_samples,
    convert_row,
    load_mix,
    load_tokenizer,
    preflight,
    recipe_names,
    render,
)
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
pytest.importorskip("torch")
pytest.importorskip("transformers")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401

DATA = Path(__file__).parents[1].parent / "shared" / "data"
CALIBRATION = DATA / "calibration"
needs_data = pytest.mark.skipif(not CALIBRATION.is_dir(), reason="shared calibration samples not present")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("cal") / "model", "qwen3_moe", layers=1)


def write_mix(path: Path, datasets: list[dict], **extra: object) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"name": path.stem, "seq_len": 256, "samples": 4, "datasets": datasets, **extra}))
    return path


def test_shipped_recipes_load() -> None:
    assert {"code-general-70-30", "agentic-code", "local-sample"} <= set(recipe_names())
    code = load_mix("code-general-70-30")
    assert [d.adapter for d in code.datasets] == ["evol-codealpaca", "c4"]
    assert code.counts() == [358, 154] and sum(code.counts()) == code.samples
    agentic = load_mix("agentic-code")
    assert len(agentic.datasets) == 6 and sum(agentic.counts()) == agentic.samples
    assert {"xlam-function-calling", "swe-smith"} <= {d.adapter for d in agentic.datasets}


def test_unknown_recipe_and_adapter_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Did you mean 'agentic-code'"):
        load_mix("agentic-cod")
    bad = write_mix(tmp_path / "bad.yaml", [{"adapter": "xlam-function-caling", "count": 2}])
    with pytest.raises(UserError, match="unknown adapter 'xlam-function-caling'.*Did you mean 'xlam-function-calling'"):
        load_mix(bad)


@needs_data
def test_local_sample_recipe_builds_chat_formatted_samples(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    with pytest.raises(UserError, match=r"\{data_dir\}: pass --data-dir"):
        build_samples(load_mix("local-sample", samples=3), model)
    mix = load_mix("local-sample", data_dir=DATA, seq_len=128)
    first = build_samples(mix, model)
    assert first.per_dataset == {"code-feedback-sample": 10, "swe-smith-sample": 5, "c4-sample": 5}
    assert all(2 <= len(ids) <= 128 for ids in first.token_ids)
    assert build_samples(mix, model).sha256 == first.sha256
    assert build_samples(mix.model_copy(update={"seed": 1}), model).sha256 != first.sha256


@needs_data
def test_renamed_column_fails_preflight_fast_naming_dataset_and_field(model: Path, tmp_path: Path) -> None:
    drifted = tmp_path / "c4-drifted.jsonl"
    rows = [json.loads(line) for line in (CALIBRATION / "c4-en-sample.jsonl").read_text().splitlines()]
    drifted.write_text("".join(json.dumps({"body" if k == "text" else k: v for k, v in r.items()}) + "\n"
                               for r in rows))
    mix_path = write_mix(tmp_path / "drift.yaml", [
        {"adapter": "code-feedback", "count": 2, "data_files": str(CALIBRATION / "code-feedback-sample.json")},
        {"adapter": "c4", "name": "web", "count": 2, "data_files": str(drifted)},
    ])
    started = time.perf_counter()
    with pytest.raises(UserError) as error:
        preflight(load_mix(mix_path), model)
    assert time.perf_counter() - started < 60
    message = str(error.value)
    assert "'web'" in message and "field 'text' is missing" in message and "body" in message
    # The mapping the message suggests fixes it.
    fixed = write_mix(tmp_path / "fixed.yaml", [{"adapter": "c4", "name": "web", "count": 2, "data_files": str(drifted),
                                                 "fields": {"text": "body"}}])
    report = preflight(load_mix(fixed), model)
    assert report.datasets[0].rows_checked == 5 and report.total_tokens > 0


@needs_data
def test_preflight_reads_no_weights(model: Path, tmp_path: Path) -> None:
    import shutil

    headers_only = tmp_path / "headers"
    shutil.copytree(model, headers_only)
    for file in headers_only.glob("*.safetensors"):
        raw = file.read_bytes()
        file.write_bytes(raw[: 8 + int.from_bytes(raw[:8], "little")])
    report = preflight(load_mix("local-sample", data_dir=DATA), headers_only)
    assert [d.rows_checked for d in report.datasets] == [8, 5, 5]
    assert report.estimated_memory_bytes > 0 and report.estimated_seconds > 0
    assert report.seconds < 60


def test_xlam_row_renders_tools_and_tool_calls(model: Path) -> None:
    from bench.engine.planning.calibration import DatasetSpec

    spec = DatasetSpec(adapter="xlam-function-calling", count=1)
    row = {
        "query": "What is the weather in Lyon?",
        "tools": json.dumps([{"name": "get_weather", "description": "Current weather",
                              "parameters": {"city": {"type": "str", "description": "City name"},
                                             "unit": {"type": "str, optional", "description": "C or F",
                                                      "default": "C"}}}]),
        "answers": json.dumps([{"name": "get_weather", "arguments": {"city": "Lyon"}}]),
    }
    conversation = convert_row(spec, row, 0)
    assert conversation.tools[0]["function"]["parameters"]["required"] == ["city"]
    text = render(conversation, load_tokenizer(model))
    assert "<tools>" in text and '"get_weather"' in text and '"Lyon"' in text and "<tool_call>" in text


@pytest.mark.parametrize(
    ("adapter", "row", "expected"),
    [
        ("evol-codealpaca", {"instruction": "Reverse a list in Python.", "output": "xs[::-1]"}, "xs[::-1]"),
        ("mixture-of-thoughts-math", {"messages": [{"role": "user", "content": "2+2?"},
                                                   {"role": "assistant", "content": "<think>easy</think>4"}]},
         "<think>easy</think>4"),
        ("swe-smith", {"messages": json.dumps([
            {"role": "user", "content": "Fix the bug"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"ls\"}"}}]},
            {"role": "tool", "content": "README.md"}])}, "README.md"),
        ("mmlu", {"question": "Which is a prime?", "choices": ["4", "6", "7", "9"], "answer": 2}, "The answer is C."),
    ],
)
def test_adapters_render_through_the_chat_template(model: Path, adapter: str, row: dict, expected: str) -> None:
    from bench.engine.planning.calibration import DatasetSpec

    text = render(convert_row(DatasetSpec(adapter=adapter, count=1), row, 0), load_tokenizer(model))
    assert "<|im_start|>assistant" in text and expected in text


def test_wrong_type_is_named(tmp_path: Path) -> None:
    from bench.engine.planning.calibration import DatasetSpec

    spec = DatasetSpec(adapter="evol-codealpaca", name="code", count=1)
    with pytest.raises(UserError, match=r"'code'.*row 3: field 'output' should be str, found int"):
        convert_row(spec, {"instruction": "x", "output": 5}, 3)


@needs_data
def test_local_parquet_with_field_mapping(model: Path, tmp_path: Path) -> None:
    import pandas as pd

    parquet = tmp_path / "pairs.parquet"
    pd.DataFrame({"q": ["Name a color.", "Name a fruit."], "a": ["Blue.", "Apple."]}).to_parquet(parquet)
    mix_path = write_mix(tmp_path / "pairs.yaml", [{"adapter": "prompt-response", "count": 2, "data_files": str(parquet),
                                                    "fields": {"prompt": "q", "response": "a"}}])
    samples = build_samples(load_mix(mix_path), model)
    assert samples.per_dataset == {"prompt-response": 2}
    mmlu = DATA / "mmlu" / "mmlu_all_dev.parquet"
    mix_path = write_mix(tmp_path / "mmlu.yaml", [{"adapter": "mmlu", "count": 3, "data_files": str(mmlu)}])
    assert len(build_samples(load_mix(mix_path), model).token_ids) == 3
