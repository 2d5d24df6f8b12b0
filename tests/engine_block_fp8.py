"""Tiny MoE checkpoints whose expert weights span several 128-row FP8 blocks, in bf16 and block FP8.

``engine_tiny`` keeps every expert inside one partial 128x128 block (32 x 64); here the expert
intermediate size is chosen per test (160: one whole block and a partial one; 128: exactly one),
so scales, partial blocks and per-rank shards all get exercised.
"""

from __future__ import annotations

from pathlib import Path

from engine_tiny import tiny_config, write_tokenizer


def build_wide(out: Path, family: str = "deepseek_v3", *, moe_intermediate: int = 160, n_experts: int = 8,
               layers: int = 2, seed: int = 0) -> Path:
    """A random bf16 MoE of ``family`` (per-expert tensors) with ``moe_intermediate`` rows per expert."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, n_experts=n_experts, layers=layers)
    config.moe_intermediate_size = moe_intermediate
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) * (0.5 / max(param.shape[-1], 1) ** 0.5))
    model.to(torch.bfloat16).save_pretrained(out)
    write_tokenizer(out, vocab=config.vocab_size)
    return out


def build_block_fp8(out: Path, source: Path, *, scope: str = "all") -> Path:
    """``source`` with block-FP8 linear weights (``scope="experts"``: routed experts only)."""
    from bench.engine.toys.block_fp8 import write_block_fp8

    return write_block_fp8(source, out, block=128, scope=scope)  # type: ignore[arg-type]
