"""How much GPU memory a job's two pools will peak at, from its job spec alone, before it runs.

Why from the spec: the daemon must decide at submit whether a job can ever fit a GPU, and at each
pass which jobs fit beside each other, without building a model (a 1B model takes seconds to
build, and the daemon has no GPU of its own to spare). So parameter counts are computed from the
model's configuration, and activations from a per-token cost measured on the GPU machine.

Per GPU of a job (the one-GPU, colocated layout; on more GPUs each holds at most this):

- **weight pool** = learner master weights (fp32, 4 bytes a parameter) + Adam's two moments
  (8 bytes a trainable parameter) + the actor's replica (bf16: 2 bytes a parameter) + the staging
  buffer of a published version (2 bytes a trainable parameter). Exact for the model's tensors.
- **activation pool** = the learner's peak above its weights in one minibatch step + the learner's
  batch of samples on the GPU + the actor's peak at its largest batch. The learner's: autocast's
  bf16 copies of the weights (2 bytes a parameter, kept for the backward pass), with LoRA the
  adapters' fp32 gradients (4 bytes a trainable parameter; with full fine-tuning gradients appear
  as activations are freed, inside the next term), and ``k_learn × minibatch × tokens × layers ×
  hidden × 2`` bytes of saved activations; the actor's ``k_act × batch × tokens × hidden × 2``.

The ``k`` are the largest marginal per-token costs measured in ``memory_calibration.json``
(``scripts/calibrate_vram.py`` on the H200: two batch sizes per model size, so a slope each), and a
constant ``c`` per term the largest bytes left over, so the estimate is at or above every measured
size (and within 1.3x of it at batch 64).

Only ``transformer-vla`` on a built-in env has a model shape here; for other policies and user envs
:func:`estimate` returns None and a job that shares GPUs must give its budgets as sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from dvla.spec import JobSpec
from dvlad.policies.trunk import PRESETS
from dvlad.sched.memory_fit import MemoryAsk

CALIBRATION = Path(__file__).with_name("memory_calibration.json")
SHARED_MARGIN = 1.25
"""An ``"auto"`` activation budget of a job that shares GPUs is the estimate times this."""
PROCESS_OVERHEAD = 2 << 30
"""GPU memory outside both pools per job process (CUDA context, cuBLAS workspaces, compiled graphs):
the 1B LoRA job measured through the daemon held 4.0 GiB outside its pools in two processes."""
ACTION_DIM = 7

@dataclass(frozen=True)
class ModelShape:
    params: int
    trainable: int
    hidden: int
    layers: int
    tokens: int
    """Tokens per observation: image patches, proprio, instruction, action queries, value."""
    observation_bytes: int
    """One observation as the learner's batch holds it (images, proprio, instruction)."""
    base: int = 0
    """Parameters of the trunk itself (embeddings, blocks, final norm): what LoRA freezes, and what
    jobs with ``resources.share_base`` hold once per device."""


@dataclass(frozen=True)
class Coefficients:
    """Per (``"learner"`` or ``"actor"``, LoRA or not): the per-token cost in multiples of ``tokens ×
    hidden × 2`` bytes (times layers for the learner), and constant bytes on top; fitted by :func:`fit`."""

    k: dict[tuple[str, bool], float]
    c: dict[tuple[str, bool], float]


def _env_shape(spec: JobSpec) -> tuple[list[tuple[int, int]], int] | None:
    """Camera sizes and proprio length of a built-in env from its args; None for a user's env."""
    args, name = spec.env.args, spec.env.name
    if name == "reach":
        size = int(args.get("image_size", 64))
        return [(size, size)], 4
    if name in ("synthetic", "libero"):
        size = int(args.get("image_size", 128))
        cameras = args.get("cameras", ("agentview", "wrist"))
        count = 3 if cameras is True else len(cameras or [])  # libero: True means all of its cameras
        return [(size, size)] * count, int(args.get("proprio_dim", 8))
    return None


def model_shape(spec: JobSpec) -> ModelShape | None:
    """The parameter counts and sequence length of the job's ``transformer-vla``; None for another
    policy, a pretrained trunk (its config is the user's file) or a user's env."""
    args = spec.policy.args
    env = _env_shape(spec)
    if spec.policy.name != "transformer-vla" or env is None or args.get("pretrained"):
        return None
    cameras, proprio = env
    trunk = {**PRESETS[args.get("preset") or "tiny"], **args.get("trunk", {})}
    h, n_layers, inter = trunk["hidden_size"], trunk["num_hidden_layers"], trunk["intermediate_size"]
    kv = trunk["num_key_value_heads"] * trunk.get("head_dim", h // trunk["num_attention_heads"])
    vocab, bins = int(trunk.get("vocab_size", args.get("vocab_size", 1024))), int(args.get("bins", 256))
    patch, instruction = int(args.get("patch_size", 8)), int(args.get("max_instruction_tokens", 16))
    queries = spec.policy.action_chunk * ACTION_DIM + 1
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    base = vocab * h + n_layers * per_layer + h
    patches = [(H // patch) * (W // patch) for H, W in cameras]
    vision = sum(3 * patch * patch * h + h + n * h for n in patches)
    if args.get("vision_mlp", True):
        vision += len(cameras) * (2 * h + 2 * (h * h + h))
    aux = 2 if spec.env.name == "reach" else 0
    heads = len(cameras) * h + proprio * h + h + queries * h + h * bins + bins + h + 1 + (h * aux + aux if aux else 0)
    lora = args.get("lora")
    adapters = 0
    if lora is not None:
        r = int(lora.get("r", 16))
        shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, inter),
                  "up_proj": (h, inter), "down_proj": (inter, h)}
        targets = lora.get("target_modules", list(shapes))
        adapters = n_layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)
    params = base + adapters + vision + heads
    trainable = params if lora is None else adapters + vision + heads
    tokens = sum(patches) + 1 + instruction + queries
    observation_bytes = sum(H * W * 3 for H, W in cameras) + 4 * proprio + 8 * instruction
    return ModelShape(params, trainable, h, n_layers, tokens, observation_bytes, base)


def weight_bytes(shape: ModelShape, precision: str = "auto", shared_base: bool = False) -> int:
    """The weight pool: fp32 master weights and Adam moments, the actor replica and staging buffer
    (bf16, fp32 with ``precision = "fp32"``); with a shared base, none of the base's copies (its
    holder's one copy is :func:`base_bytes`)."""
    actor = 4 if precision == "fp32" else 2
    params = shape.params - (shape.base if shared_base else 0)
    return 4 * params + 8 * shape.trainable + actor * (params + shape.trainable)


def base_bytes(shape: ModelShape, precision: str = "auto") -> int:
    """The one shared copy of the base on a GPU: in the actor's dtype (bf16 unless fp32 is asked)."""
    return (4 if precision == "fp32" else 2) * shape.base


def _learner_fixed(params: int, trainable: int, lora: bool) -> int:
    """What a learner step holds besides saved activations: autocast's bf16 weight copies, and
    with LoRA the adapters' fp32 gradients."""
    return 2 * params + (4 * trainable if lora else 0)


def _unit(row: dict[str, Any]) -> float:
    return row["batch"] * row["tokens"] * row["hidden"] * 2 * (row["layers"] if row["kind"] == "learner" else 1)


def _fixed(row: dict[str, Any]) -> int:
    return _learner_fixed(row["params"], row["trainable"], row["lora"]) if row["kind"] == "learner" else 0


def fit(rows: list[dict[str, Any]]) -> Coefficients:
    """The largest slope over the two batch sizes of each measured model size, then the largest
    bytes left over by it (rows of ``scripts/calibrate_vram.py``)."""
    sizes: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        sizes.setdefault((r["kind"], r["lora"], r["preset"], r["tokens"]), []).append(r)
    k: dict[tuple[str, bool], float] = {}
    for (kind, lora, *_), same in sizes.items():
        small, large = min(same, key=_unit), max(same, key=_unit)
        slope = (large["peak"] - small["peak"]) / (_unit(large) - _unit(small))
        k[kind, lora] = max(k.get((kind, lora), 0.0), slope)
    c: dict[tuple[str, bool], float] = {}
    for r in rows:
        key = (r["kind"], r["lora"])
        c[key] = max(c.get(key, 0.0), r["peak"] - _fixed(r) - k[key] * _unit(r))
    return Coefficients(k, c)


@cache
def calibration() -> Coefficients:
    return fit(json.loads(CALIBRATION.read_text())["rows"])


def learner_peak(shape: ModelShape, lora: bool, minibatch: int, k: Coefficients, shared_base: bool = False) -> int:
    """With a shared base, autocast makes no bf16 copies of it: it is bf16 already."""
    unit = minibatch * shape.tokens * shape.layers * shape.hidden * 2
    key = ("learner", lora)
    params = shape.params - (shape.base if shared_base else 0)
    return int(_learner_fixed(params, shape.trainable, lora) + k.k[key] * unit + k.c[key])


def actor_peak(shape: ModelShape, lora: bool, batch: int, k: Coefficients) -> int:
    return int(k.k["actor", lora] * batch * shape.tokens * shape.hidden * 2 + k.c["actor", lora])


def estimate(spec: JobSpec, k: Coefficients | None = None) -> MemoryAsk | None:
    """The job's per-GPU pool peaks (see the module docstring); None where its model has no shape here."""
    shape = model_shape(spec)
    if shape is None:
        return None
    k = k or calibration()
    lora = spec.policy.args.get("lora") is not None
    shared = spec.resources.share_base and lora
    samples = spec.env.num_envs * spec.pipeline.segment_steps
    minibatch = -(-samples // spec.algo.minibatches)
    activation = (learner_peak(shape, lora, minibatch, k, shared) + samples * shape.observation_bytes
                  + actor_peak(shape, lora, spec.env.num_envs, k))
    processes = 1 if spec.pipeline.learner == "thread" else 2
    precision = spec.resources.precision
    return MemoryAsk(weight_bytes(shape, precision, shared), activation, processes * PROCESS_OVERHEAD,
                     base=base_bytes(shape, precision) if shared else 0)
