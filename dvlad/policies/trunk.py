"""The transformer trunk of ``transformer-vla``: a Hugging Face decoder from a preset, a config or a
local checkpoint, optionally with LoRA adapters.

Why a Hugging Face decoder (Qwen2 layout by default) rather than our own blocks: VLA users start
from pretrained language models, so the trunk must load their weights as they are published
(safetensors in a model directory), and the same code must build a random model of the same
layout for tests and benchmarks. Only the hidden states are used (``AutoModel``, no LM head): the
policy's own heads read them.

Why never a download: lab machines are offline and a job must not depend on the Hub; a
pretrained trunk is a local directory, loaded with ``local_files_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvlad.sharing import base as shared

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 384},
    "50m": {"hidden_size": 512, "num_hidden_layers": 16, "num_attention_heads": 8, "num_key_value_heads": 4,
            "intermediate_size": 1536},
    "1b": {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 16, "num_key_value_heads": 8,
           "intermediate_size": 5504},
}
"""Qwen2 sizes: "tiny" for CPU tests, "50m" for CPU training runs, "1b" for the GPU benchmark
(parameter counts of the whole policy in docs/policies.md, checked by tests)."""

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Every linear layer of a Qwen2/Llama block, as QLoRA recommends (adapting attention only
trains noticeably worse); override with ``lora.target_modules``."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def trunk_config(preset: str | None, overrides: dict[str, Any], vocab_size: int) -> Any:
    """A Qwen2 config from a preset and explicit overrides (``model_type`` may name another layout)."""
    from transformers import AutoConfig

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown trunk preset {preset!r}: use one of {', '.join(PRESETS)} or trunk = {{...}}")
    values: dict[str, Any] = {"vocab_size": vocab_size, "max_position_embeddings": 2048,
                              "tie_word_embeddings": False, "use_cache": False}
    values.update(PRESETS[preset or "tiny"])
    values.update(overrides)
    model_type = values.pop("model_type", "qwen2")
    return AutoConfig.for_model(model_type, **values)


def build_trunk(config: Any, dtype: torch.dtype) -> nn.Module:
    """A randomly initialised decoder (seeded by the caller, so every process builds the same); inside
    :func:`dvlad.sharing.base.using`, the decoder whose weights are the shared base's (nothing made)."""
    from transformers import AutoModel

    base = shared.active()
    if base is None:
        return AutoModel.from_config(config, attn_implementation="sdpa", dtype=dtype)
    with torch.device("meta"):
        trunk = AutoModel.from_config(config, attn_implementation="sdpa", dtype=dtype)
    shared.install(trunk, base)
    return trunk


def load_trunk(directory: str, dtype: torch.dtype) -> nn.Module:
    """A decoder's weights from a local Hugging Face directory (``config.json`` + safetensors)."""
    from transformers import AutoModel

    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ValueError(f"pretrained trunk {directory!r} is not a directory (give a local Hugging Face "
                         "model directory; nothing is downloaded)")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise ValueError(f"pretrained trunk {directory!r} needs config.json and *.safetensors weights "
                         "(save it with save_pretrained(..., safe_serialization=True))")
    return AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa", dtype=dtype)


def apply_lora(trunk: nn.Module, lora: dict[str, Any]) -> None:
    """Inject LoRA adapters into ``trunk`` in place and freeze everything else of it.

    Why ``inject_adapter_in_model`` and not ``get_peft_model``: the trunk stays the same module
    (no PeftModel wrapper whose forward expects a task), so the policy calls it the same way with
    or without adapters, and parameter names only gain the adapters' ``lora_A``/``lora_B``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    known = {"r", "alpha", "dropout", "target_modules"}
    unknown = set(lora) - known
    if unknown:
        raise ValueError(f"unknown lora key(s) {sorted(unknown)}: use {sorted(known)}")
    r = int(lora.get("r", 16))
    config = LoraConfig(r=r, lora_alpha=float(lora.get("alpha", 2 * r)), lora_dropout=float(lora.get("dropout", 0.0)),
                        target_modules=list(lora.get("target_modules", LORA_TARGETS)), bias="none")
    inject_adapter_in_model(config, trunk)
    for name, param in trunk.named_parameters():
        param.requires_grad_("lora_" in name)
