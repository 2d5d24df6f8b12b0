"""Family adapters: router, experts and shared experts found from headers, in both layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.moe import family_for, resolve, set_expert_count
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401


@pytest.mark.parametrize(
    ("family", "n_moe_layers", "router_extras", "shared"),
    [
        ("qwen3_moe", 2, 0, 0),
        ("qwen2_moe", 2, 0, 4),  # shared_expert gate/up/down + shared_expert_gate
        ("mixtral", 2, 0, 0),
        ("olmoe", 2, 0, 0),
        ("deepseek_v3", 1, 1, 3),  # first layer dense; e_score_correction_bias; shared_experts
        ("qwen3_5_moe", 2, 0, 4),  # Gated DeltaNet + attention hybrid, shared expert and its gate
    ],
)
def test_resolve_per_expert_layout(tmp_path: Path, family: str, n_moe_layers: int, router_extras: int,
                                   shared: int) -> None:
    ckpt = Checkpoint.open(build_tiny(tmp_path / family, family, n_experts=4, tokenizer=False))
    model = resolve(ckpt)
    assert model.family.name == family
    assert model.n_experts == 4 and model.top_k == 2
    assert len(model.layers) == n_moe_layers
    layer = model.layers[-1]
    assert layer.layout == "per_expert"
    assert ckpt.tensors[layer.router].shape == (4, 64)
    assert sorted(layer.expert_tensors) == [0, 1, 2, 3]
    assert all(len(names) == 3 for names in layer.expert_tensors.values())
    assert len(layer.router_extras) == router_extras
    assert len(layer.shared_tensors) == shared
    # Experts, router and shared parts are disjoint.
    assert not set(layer.all_expert_tensors()) & set(layer.shared_tensors)


def test_resolve_fused_layout(tmp_path: Path) -> None:
    ckpt = Checkpoint.open(build_tiny(tmp_path / "fused", "qwen3_moe", layout="fused", n_experts=6, tokenizer=False))
    model = resolve(ckpt)
    layer = model.layers[0]
    assert layer.layout == "fused"
    shapes = {name.rsplit(".", 1)[-1]: ckpt.tensors[name].shape for name in layer.fused_tensors}
    assert shapes == {"gate_up_proj": (6, 64, 64), "down_proj": (6, 64, 32)}


def test_qwen3_5_nested_text_config_and_prefix(tmp_path: Path) -> None:
    """Qwen3.5-MoE nests its text config and stores fused experts under model.language_model."""
    from safetensors.torch import save_file

    out = tmp_path / "q35"
    out.mkdir()
    e, h, i = 4, 16, 8
    p = "model.language_model.layers.0.mlp."
    tensors = {
        f"{p}gate.weight": torch.zeros(e, h),
        f"{p}experts.gate_up_proj": torch.zeros(e, 2 * i, h),
        f"{p}experts.down_proj": torch.zeros(e, h, i),
        f"{p}shared_expert.gate_proj.weight": torch.zeros(i, h),
        f"{p}shared_expert_gate.weight": torch.zeros(1, h),
        "model.language_model.embed_tokens.weight": torch.zeros(10, h),
    }
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "model_type": "qwen3_5_moe",
        "text_config": {"model_type": "qwen3_5_moe_text", "num_hidden_layers": 1, "num_experts": e,
                        "num_experts_per_tok": 2, "hidden_size": h, "moe_intermediate_size": i},
    }))
    model = resolve(Checkpoint.open(out))
    assert model.family.name == "qwen3_5_moe"
    assert model.layer_prefix == "model.language_model.layers."
    assert model.layers[0].layout == "fused"
    assert len(model.layers[0].shared_tensors) == 2
    pruned = set_expert_count(model.config, model.family, 2)
    assert pruned["text_config"]["num_experts"] == 2 and "num_experts" not in pruned


def test_unknown_family_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model_type 'qwen3_mo' .*not a known MoE family.*Did you mean 'qwen3_moe'"):
        family_for({"model_type": "qwen3_mo", "architectures": ["X"]})


def test_missing_expert_count_is_named(tmp_path: Path) -> None:
    out = build_tiny(tmp_path / "m", "mixtral", n_experts=4, tokenizer=False)
    config = json.loads((out / "config.json").read_text())
    del config["num_local_experts"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="'num_local_experts'"):
        resolve(Checkpoint.open(out))


def test_config_weight_disagreement_is_named(tmp_path: Path) -> None:
    out = build_tiny(tmp_path / "m", "qwen3_moe", n_experts=4, tokenizer=False)
    config = json.loads((out / "config.json").read_text())
    config["num_local_experts"] = 6
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"has 4 rows but config.json num_local_experts=6"):
        resolve(Checkpoint.open(out))
