"""Randomly initialised vision-language checkpoints written with ``save_pretrained``, as a user's
directory holds a published one: config.json, model.safetensors and the processor's files (image
processor, tokenizer), all built offline.

Why: ``hf-vla`` is tested on tiny ones (tests/test_hf_vla.py), and benchmarked at real sizes where no
weights can be carried to the machine (``scripts/write_vlm_checkpoint.py``): a random model of a real
model's sizes costs what the real one costs. Why a word-level tokenizer built with ``tokenizers``: a
real one is a download; this one has the special tokens each processor needs and a few instruction
words, and loads through ``AutoProcessor`` as any checkpoint's ``tokenizer.json`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WORDS = ("touch", "reach", "the", "red", "green", "blue", "yellow", "cube", "pick", "up", "place", "put", "on", "in",
         "block", "bowl", "plate", "open", "drawer")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<global-img>",
            "<end_of_utterance>"]
VOCAB = 400
"""Embedding rows of the tiny models: more than its tokenizer's words, so that the last 256 ids are
free for action tokens, as in a real vocabulary."""


@dataclass(frozen=True)
class Size:
    """A model's sizes: its decoder's, its vision encoder's, and the pixel shuffle (Idefics3)."""

    text: dict[str, int]
    vision: dict[str, int]
    scale_factor: int = 2


SIZES: dict[str, Size] = {
    "tiny": Size(
        text={"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "head_dim": 16},
        vision={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "image_size": 32, "patch_size": 8}),
    "500m": Size(  # about SmolVLM-500M: a 12-layer SigLIP at 512 px, a 32-layer decoder of width 960
        text={"vocab_size": 49280, "hidden_size": 960, "num_hidden_layers": 32, "num_attention_heads": 15,
              "num_key_value_heads": 5, "intermediate_size": 2560, "head_dim": 64},
        vision={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "image_size": 512, "patch_size": 16},
        scale_factor=4),
}
"""Sizes :func:`write_checkpoint` builds: "tiny" for tests on a CPU, "500m" for a GPU benchmark."""
FAMILIES = ("idefics3", "paligemma")
"""The layouts written here: SmolVLM's (Idefics3: a SigLIP encoder, pixel shuffle, a Llama decoder) and
PaliGemma's (SigLIP, a linear projector, a Gemma decoder)."""


def tokenizer() -> Any:
    """A fast tokenizer of :data:`WORDS` with the special tokens of both processors."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[4:]})
    return fast


def _idefics3(tok: Any, size: Size) -> tuple[Any, Any]:
    from transformers import AutoConfig, Idefics3ImageProcessor, Idefics3Processor

    text = {k: v for k, v in size.text.items() if k != "head_dim"}
    config = AutoConfig.for_model("idefics3", text_config={"model_type": "llama", **text}, vision_config=size.vision,
                                  scale_factor=size.scale_factor, image_token_id=tok.convert_tokens_to_ids("<image>"))
    pixels = size.vision["image_size"]
    image_processor = Idefics3ImageProcessor(size={"longest_edge": pixels}, max_image_size={"longest_edge": pixels},
                                             do_image_splitting=False)
    tokens = (pixels // size.vision["patch_size"]) ** 2 // size.scale_factor**2
    return config, Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=tokens)


def _paligemma(tok: Any, size: Size) -> tuple[Any, Any]:
    from transformers import AutoConfig, PaliGemmaProcessor, SiglipImageProcessor

    width, pixels = size.text["hidden_size"], size.vision["image_size"]
    config = AutoConfig.for_model("paligemma", text_config={"model_type": "gemma", **size.text},
                                  vision_config={**size.vision, "projection_dim": width}, projection_dim=width,
                                  hidden_size=width, image_token_index=tok.convert_tokens_to_ids("<image>"))
    image_processor = SiglipImageProcessor(size={"height": pixels, "width": pixels})
    image_processor.image_seq_length = (pixels // size.vision["patch_size"]) ** 2
    return config, PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)


def write_checkpoint(directory: Path, family: str, seed: int = 0, size: str = "tiny") -> Path:
    """A random ``family`` checkpoint (one of :data:`FAMILIES`) of ``size`` (:data:`SIZES`) with its
    processor in ``directory``."""
    from transformers import AutoModelForImageTextToText

    if family not in FAMILIES or size not in SIZES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)} and size one of {', '.join(SIZES)}")
    config, processor = {"idefics3": _idefics3, "paligemma": _paligemma}[family](tokenizer(), SIZES[size])
    torch.manual_seed(seed)
    AutoModelForImageTextToText.from_config(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


REMOTE_MODELING = '''"""A checkpoint's own model code: Idefics3's layout under a model type transformers lacks."""
from transformers import Idefics3Config, Idefics3ForConditionalGeneration


class TinyCustomConfig(Idefics3Config):
    model_type = "tiny_custom_vlm"


class TinyCustomVLM(Idefics3ForConditionalGeneration):
    config_class = TinyCustomConfig
'''


def write_remote_code_checkpoint(directory: Path) -> Path:
    """A checkpoint whose model code ships in the directory (``auto_map`` in config.json), as OpenVLA
    publishes its own: a tiny Idefics3 renamed ``tiny_custom_vlm``, with the modeling file beside it."""
    write_checkpoint(directory, "idefics3")
    (directory / "modeling_tiny_custom.py").write_text(REMOTE_MODELING)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config["model_type"] = "tiny_custom_vlm"
    config["auto_map"] = {"AutoConfig": "modeling_tiny_custom.TinyCustomConfig",
                          "AutoModelForImageTextToText": "modeling_tiny_custom.TinyCustomVLM"}
    config_file.write_text(json.dumps(config, indent=2))
    return directory
