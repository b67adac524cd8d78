"""Loading a vision-language model from a local Hugging Face checkpoint directory, with its processor.

Why its own module: the checks a user's directory must pass (what is missing, whether its model code
may run) are the part of ``hf-vla`` a user meets first, and they must end in one line that names what
is missing, not in a transformers traceback from deep inside ``from_pretrained``.

Why never a download: lab machines are offline and a job must not depend on the Hub; everything is
read with ``local_files_only=True``.

Why ``trust_remote_code`` is refused unless the job says so: a checkpoint whose ``config.json`` has
an ``auto_map`` ships Python files (``modeling_*.py``) that transformers imports and runs, as the user
who runs the job, with all their rights. Loading such a directory is a decision about that code, not
about weights, so the job file must take it explicitly (``trust_remote_code = true``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHT_PATTERNS = ("*.safetensors",)
"""Weights must be safetensors: a pickled ``pytorch_model.bin`` runs code when it is loaded."""
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory; ValueError naming what is wrong with it."""
    if not path.is_dir():
        raise ValueError(f"pretrained {str(path)!r} is not a directory (give a local Hugging Face model "
                         "directory; nothing is downloaded)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"pretrained {str(path)!r} has no config.json (save the model with save_pretrained)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"pretrained {str(path)!r}: config.json is not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"pretrained {str(path)!r}: config.json is not a JSON object")
    return config


def check_directory(path: Path, trust_remote_code: bool) -> dict[str, Any]:
    """Refuse, in one line each, a directory that cannot load: no config, no safetensors weights, no
    processor or tokenizer, or model code the job did not allow. Returns its config."""
    config = read_config(path)
    auto_map = config.get("auto_map") or {}
    if auto_map and not trust_remote_code:
        code = sorted({str(target).split(".")[0] + ".py" for target in auto_map.values()})
        raise ValueError(f"pretrained {str(path)!r} ships its own model code ({', '.join(code)}), which would run "
                         "as you: refused unless the job sets policy.args.trust_remote_code = true "
                         "(read that code first)")
    if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
        raise ValueError(f"pretrained {str(path)!r} has no *.safetensors weights "
                         "(save it with save_pretrained(..., safe_serialization=True); pickled .bin files are refused)")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        raise ValueError(f"pretrained {str(path)!r} has no processor ({' or '.join(PROCESSOR_FILES)}): save the "
                         "model's processor beside it with processor.save_pretrained(dir)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"pretrained {str(path)!r} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): save the "
                         "model's processor (with its tokenizer) beside it with processor.save_pretrained(dir)")
    return config


def load_vlm(directory: str, dtype: torch.dtype, trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    """An image-text-to-text model and its processor from a local directory, both offline.

    The model is what ``AutoModelForImageTextToText`` builds for the directory's ``model_type``
    (SmolVLM/Idefics3, PaliGemma, ... natively; another through its own code with
    ``trust_remote_code``). ValueError in one line where the directory or its model type does not fit.
    """
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(directory).expanduser()
    config = check_directory(path, trust_remote_code)
    model_type = config.get("model_type", "?")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                            trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as exc:
        if "auto_map" in config:
            raise ValueError(f"pretrained {str(path)!r}: its own model code did not load "
                             f"({str(exc).splitlines()[0]})") from exc
        raise ValueError(f"pretrained {str(path)!r}: model_type {model_type!r} is not an image-text-to-text model "
                         f"transformers {transformers.__version__} knows (AutoModelForImageTextToText); "
                         "see docs/policies.md for what to do") from exc
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"pretrained {str(path)!r}: its processor did not load ({str(exc).splitlines()[0]})") from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ValueError(f"pretrained {str(path)!r}: {type(processor).__name__} is not a vision-language processor "
                         "(it needs an image processor and a tokenizer)")
    return model, processor
