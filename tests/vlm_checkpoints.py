"""Tiny, randomly initialised vision-language checkpoints written with ``save_pretrained``, as a user's
directory holds a published one: config.json, model.safetensors and the processor's files (image
processor, tokenizer), all built offline.

Why a word-level tokenizer built with ``tokenizers``: a real one is a download; this one has the
special tokens each processor needs and a few instruction words, and loads through ``AutoProcessor``
as any checkpoint's ``tokenizer.json`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("touch", "reach", "the", "red", "green", "blue", "yellow", "cube", "pick", "up", "place", "put", "on", "in",
         "block", "bowl", "plate", "open", "drawer")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<global-img>",
            "<end_of_utterance>"]
VOCAB = 400
"""Embedding rows of every tiny model: more than its tokenizer's words, so that the last 256 ids are
free for action tokens, as in a real vocabulary."""
TEXT = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128}
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "image_size": 32, "patch_size": 8}
FAMILIES = ("idefics3", "paligemma")
"""The layouts written here: SmolVLM's (Idefics3: a SigLIP encoder, pixel shuffle, a Llama decoder) and
PaliGemma's (SigLIP, a linear projector, a Gemma decoder)."""


def tokenizer():
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


def _idefics3(tok):
    from transformers import AutoConfig, Idefics3ImageProcessor, Idefics3Processor

    config = AutoConfig.for_model("idefics3", text_config={"model_type": "llama", **TEXT}, vision_config=VISION,
                                  scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"))
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                             do_image_splitting=False)
    return config, Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4)


def _paligemma(tok):
    from transformers import AutoConfig, PaliGemmaProcessor, SiglipImageProcessor

    config = AutoConfig.for_model("paligemma", text_config={"model_type": "gemma", **TEXT, "head_dim": 16},
                                  vision_config={**VISION, "projection_dim": 64}, projection_dim=64,
                                  hidden_size=64, image_token_index=tok.convert_tokens_to_ids("<image>"))
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16  # (32 / 8)² patches
    return config, PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)


def write_checkpoint(directory: Path, family: str, seed: int = 0) -> Path:
    """A tiny random ``family`` checkpoint (one of :data:`FAMILIES`) with its processor in ``directory``."""
    from transformers import AutoModelForImageTextToText

    config, processor = {"idefics3": _idefics3, "paligemma": _paligemma}[family](tokenizer())
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
