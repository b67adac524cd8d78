"""TransformerVLA: a VLA policy on a Hugging Face decoder trunk, at the sizes VLA users train.

Token sequence fed to the trunk (``inputs_embeds``), per observation::

    camera_1 patches ... camera_C patches  proprio  instruction(L)  action queries(K·7)  [VALUE]

The decoder is causal, so the action queries and the value token sit at the end: they see the
images, the state and the instruction, and nothing sees them. Instruction padding is masked
out of attention (the attention mask) and takes no position (positions count real tokens only),
so how far an instruction is padded never changes the output.

Why parallel decoding (OpenVLA-OFT) instead of generating the K·7 action tokens one by one:
one forward per ``act`` instead of K·7, so inference costs the same as evaluating, and the
policy is a product of independent per-token categoricals given the observation, whose exact
log-prob and entropy :meth:`evaluate` recomputes in the same single forward. Each query's
output goes through one shared head to 256 bin logits (OpenVLA-style action tokens).

Instructions are tokenized by the project's hashing :class:`WordTokenizer` into the trunk's own
vocabulary range and embedded by the trunk's input embeddings. Why not the checkpoint's own
tokenizer: no tokenizer files are needed (offline machines) and every process agrees on the ids;
with a pretrained trunk the words land on arbitrary rows of its vocabulary, which is fine for
a policy that learns what an instruction means from reward, and simple.

Vision is a ViT-style patch encoder per camera (a strided conv, learned position embeddings and
a small MLP) projecting straight to the trunk's width: cheap next to the trunk, fully trainable.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dvlad.policies.action_tokens import ActionTokenizer, sample_tokens
from dvlad.policies.base import ActOutput, EvalOutput, ObsBatch, Policy, check_observation
from dvlad.policies.text import WordTokenizer
from dvlad.policies.trunk import DTYPES, apply_lora, build_trunk, load_trunk, trunk_config
from dvlad.sharing import base as shared
from dvlad.spaces import ACTION_DIM, EnvSpec


class PatchEncoder(nn.Module):
    """uint8 B×H×W×3 -> B×(H/p·W/p)×d patch tokens: conv patchify, position embeddings, an MLP."""

    def __init__(self, height: int, width: int, patch: int, d_model: int, mlp: bool) -> None:
        super().__init__()
        if height < patch or width < patch:
            raise ValueError(f"camera of {height}×{width} is smaller than a {patch}-pixel patch")
        self.patchify = nn.Conv2d(3, d_model, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.randn((height // patch) * (width // patch), d_model) * 0.02)
        self.mlp = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
                                 nn.Linear(d_model, d_model)) if mlp else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.pos.dtype).mul(2.0 / 255.0).sub(1.0)  # [-1, 1]
        x = self.patchify(x).flatten(2).transpose(1, 2) + self.pos
        return x if self.mlp is None else x + self.mlp(x)


class TransformerVLA(Policy):
    """A VLA policy on a transformers decoder; see the module docstring for the layout.

    Args (the job's ``[policy.args]``):
        preset: trunk size, "tiny" (CPU tests), "50m" or "1b" (:data:`dvlad.policies.trunk.PRESETS`).
        trunk: config overrides on top of the preset (any Qwen2 config key; ``model_type`` for
            another decoder layout such as "llama").
        pretrained: a local Hugging Face model directory (config.json + safetensors) to load the
            trunk from instead of building it; excludes ``preset`` and ``trunk``.
        lora: ``{r, alpha, dropout, target_modules}`` to train LoRA adapters of the trunk (the
            trunk's own weights frozen); absent: full fine-tuning.
        dtype: "float32" (CPU) or "bfloat16" (GPU) for every parameter.
        patch_size, vision_mlp: the patch encoder (pixels per patch side, an MLP after it).
        max_instruction_tokens, vocab_size: the instruction tokenizer (vocab_size is the trunk's
            when it is loaded).
        bins: action bins per dimension.
    """

    def __init__(
        self,
        env_spec: EnvSpec,
        action_chunk: int = 1,
        preset: str | None = None,
        trunk: dict[str, Any] | None = None,
        pretrained: str | None = None,
        lora: dict[str, Any] | None = None,
        dtype: str = "float32",
        patch_size: int = 8,
        vision_mlp: bool = True,
        max_instruction_tokens: int = 16,
        vocab_size: int = 1024,
        bins: int = 256,
    ) -> None:
        super().__init__()
        if action_chunk < 1:
            raise ValueError(f"action_chunk must be at least 1, got {action_chunk}")
        if not env_spec.cameras:
            raise ValueError("TransformerVLA needs at least one camera in the env spec")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if pretrained and (preset or trunk):
            raise ValueError("give either pretrained = '<dir>' or preset/trunk, not both")
        torch_dtype = DTYPES[dtype]
        if pretrained:
            self.trunk = load_trunk(pretrained, torch_dtype)
        else:
            self.trunk = build_trunk(trunk_config(preset, trunk or {}, vocab_size), torch_dtype)
        if lora is not None:
            apply_lora(self.trunk, lora)
        d_model = self.trunk.config.hidden_size

        self.action_chunk = action_chunk
        self.max_instruction_tokens = max_instruction_tokens
        self.bins = bins
        self.camera_names = sorted(env_spec.cameras)
        self.text_tokenizer = WordTokenizer(self.trunk.config.vocab_size, max_instruction_tokens)
        self.action_tokenizer = ActionTokenizer(bins)
        self.vision = nn.ModuleList(
            PatchEncoder(*env_spec.cameras[name], patch_size, d_model, vision_mlp) for name in self.camera_names
        )
        self.camera_embed = nn.Parameter(torch.randn(len(self.camera_names), d_model) * 0.02)
        self.proprio = nn.Linear(env_spec.proprio_dim, d_model)
        self.queries = nn.Parameter(torch.randn(action_chunk * ACTION_DIM + 1, d_model) * 0.02)  # actions, [VALUE]
        self.action_head = nn.Linear(d_model, bins)
        self.value_head = nn.Linear(d_model, 1)
        self.aux_head = nn.Linear(d_model, env_spec.aux_dim) if env_spec.aux_dim else None
        with torch.no_grad():  # a near-uniform first policy: every bin is explored
            self.action_head.weight.mul_(0.01)
            self.action_head.bias.zero_()
        shared.cast(self, dtype=torch_dtype)  # a shared base trunk stays as its holder made it

    def published_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: with LoRA the frozen trunk stays out of the weight plane
        (built identically on both sides), so a version is the adapters, vision and heads only."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- encoding ---------------------------------------------------------------------

    def tokenize(self, instructions: list[str]) -> torch.Tensor:
        return self.text_tokenizer(instructions)

    def _features(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk outputs of the action queries B×(K·7)×d and of the value token B×d."""
        instruction = obs.instruction
        check_observation(obs, self.camera_names, self.max_instruction_tokens)
        batch = instruction.shape[0]
        parts = [enc(obs.images[name]) + self.camera_embed[i]
                 for i, (name, enc) in enumerate(zip(self.camera_names, self.vision, strict=True))]
        parts.append(self.proprio(obs.proprio.to(self.queries.dtype)).unsqueeze(1))
        prefix = sum(p.shape[1] for p in parts)
        parts.append(self.trunk.get_input_embeddings()(instruction))
        parts.append(self.queries.expand(batch, -1, -1))
        embeds = torch.cat(parts, dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        mask[:, prefix : prefix + instruction.shape[1]] = instruction != 0
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # padding takes no position: RoPE sees a gapless text
        out = self.trunk(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         use_cache=False).last_hidden_state
        return out[:, -self.queries.shape[0] : -1], out[:, -1]

    def _heads(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Action log-probs B×K×7×bins (float32), value B (float32) and the value token's output."""
        act, val = self._features(obs)
        logits = self.action_head(act).float().view(-1, self.action_chunk, ACTION_DIM, self.bins)
        return F.log_softmax(logits, dim=-1), self.value_head(val).squeeze(-1).float(), val

    # -- Policy interface --------------------------------------------------------------

    def act(self, obs: ObsBatch, deterministic: bool = False) -> ActOutput:
        logp, value, _ = self._heads(obs)
        tokens = logp.argmax(dim=-1) if deterministic else sample_tokens(logp)
        logprob = logp.gather(-1, tokens.unsqueeze(-1)).flatten(1)
        return ActOutput(tokens=tokens, actions=self.action_tokenizer.decode(tokens), logprob=logprob, value=value)

    def evaluate(self, obs: ObsBatch, tokens: torch.Tensor) -> EvalOutput:
        logp, value, val = self._heads(obs)
        logprob = logp.gather(-1, tokens.long().unsqueeze(-1)).flatten(1)
        entropy = -(logp.exp() * logp).sum(dim=-1).flatten(1)
        aux = None if self.aux_head is None else self.aux_head(val).float()
        return EvalOutput(logprob=logprob, entropy=entropy, value=value, aux=aux)

    def value(self, obs: ObsBatch) -> torch.Tensor:
        _, val = self._features(obs)
        return self.value_head(val).squeeze(-1).float()
