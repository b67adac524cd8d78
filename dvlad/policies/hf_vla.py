"""hf-vla: a VLA policy on a pretrained Hugging Face vision-language model (a local checkpoint directory).

The backbone is whatever ``AutoModelForImageTextToText`` loads from the directory (SmolVLM/Idefics3,
PaliGemma: the backbones of SmolVLA and π0), with the checkpoint's own processor: its image processor
turns each camera's frame into the model's pixel inputs and expands the image placeholders of the
prompt, its tokenizer turns the instruction into ids. Token sequence, per observation::

    [padding]  image tokens (per camera, as the processor expands them)  instruction  proprio  tail

Padding goes first (left padding, as Hugging Face generation pads): the tail always ends the
sequence, and the rotary position embeddings these backbones use depend only on the distance
between tokens, so how far an instruction is padded does not change what the policy computes.

Two action heads (``head``), the two styles of the field:

- ``"parallel"`` (OpenVLA-OFT): the tail is K·7 learned action queries and a [VALUE] query; one
  linear head maps each query's last hidden state to ``bins`` logits, all action tokens decoded in
  one forward, so ``act`` costs what ``evaluate`` costs. A value head reads [VALUE].
- ``"tokens"`` (OpenVLA): the action bins are the backbone's own vocabulary entries (the last
  ``bins`` ids that are no special or prompt token, the least used in a frequency-ordered
  vocabulary), read through its language-model head and generated autoregressively: ``act`` runs
  the prompt, then one forward per action token on its key-value cache; ``evaluate`` scores the
  given tokens in one teacher-forced forward.
  The value head reads the proprio token, the last of the prompt.

Log-probs and entropies are over the ``bins`` action entries only, so both heads are products of
exact categoricals, as PPO and GRPO need.

Why the instruction ids are shifted by one: the observation contract pads instruction ids with 0,
and 0 is a real token of most vocabularies; ``tokenize`` stores ``id + 1``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dvlad.policies.action_tokens import ActionTokenizer, sample_tokens
from dvlad.policies.base import ActOutput, EvalOutput, ObsBatch, Policy, check_observation
from dvlad.policies.trunk import DTYPES, apply_lora
from dvlad.policies.vlm import load_vlm
from dvlad.spaces import ACTION_DIM, EnvSpec

HEADS = ("parallel", "tokens")
PROCESSOR_ONLY = ("input_ids", "attention_mask", "token_type_ids", "labels")
"""Processor outputs the policy builds itself (the sequence) or does not use; the rest (pixel values,
their masks and grids) go to the model as they are."""


class HFVLA(Policy):
    """A VLA policy on a local Hugging Face image-text-to-text checkpoint; see the module docstring.

    Args (the job's ``[policy.args]``):
        pretrained: the local checkpoint directory (config.json, *.safetensors, the processor's files).
        head: "parallel" (OpenVLA-OFT action queries) or "tokens" (OpenVLA action tokens).
        trust_remote_code: allow model code shipped in the directory to run (it runs as you).
        lora: ``{r, alpha, dropout, target_modules}``: LoRA adapters, the backbone's own weights frozen.
        dtype: "float32" (CPU) or "bfloat16" (GPU) for every parameter.
        image_prompt: the prompt text of one camera's image (default: the processor's image token).
        max_instruction_tokens: instruction length in the checkpoint's tokens.
        bins: action bins per dimension.
    """

    def __init__(
        self,
        env_spec: EnvSpec,
        action_chunk: int = 1,
        pretrained: str = "",
        head: Literal["parallel", "tokens"] = "parallel",
        trust_remote_code: bool = False,
        lora: dict[str, Any] | None = None,
        dtype: str = "float32",
        image_prompt: str | None = None,
        max_instruction_tokens: int = 16,
        bins: int = 256,
    ) -> None:
        super().__init__()
        if not pretrained:
            raise ValueError("hf-vla needs pretrained = '<local Hugging Face checkpoint directory>'")
        if action_chunk < 1:
            raise ValueError(f"action_chunk must be at least 1, got {action_chunk}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if not env_spec.cameras:
            raise ValueError("hf-vla needs at least one camera in the env spec")
        if not isinstance(trust_remote_code, bool):  # "false" is a true string: never guess about running code
            raise ValueError(f"trust_remote_code must be true or false, got {trust_remote_code!r}")
        torch_dtype = DTYPES[dtype]
        self.vlm, self.processor = load_vlm(pretrained, torch_dtype, trust_remote_code)
        self.head = head
        self.action_chunk = action_chunk
        self.max_instruction_tokens = max_instruction_tokens
        self.bins = bins
        self.camera_names = sorted(env_spec.cameras)
        self.action_tokenizer = ActionTokenizer(bins)
        image_prompt = image_prompt if image_prompt is not None else getattr(self.processor, "image_token", None)
        if not image_prompt:
            raise ValueError(f"{type(self.processor).__name__} names no image token: set policy.args.image_prompt "
                             "to the prompt text of one image")
        self.image_text = image_prompt * len(self.camera_names)
        if lora is not None:
            apply_lora(self.vlm, lora)

        d_model = self.vlm.get_input_embeddings().embedding_dim
        self.proprio = nn.Linear(env_spec.proprio_dim, d_model)
        self.value_head = nn.Linear(d_model, 1)
        self.aux_head = nn.Linear(d_model, env_spec.aux_dim) if env_spec.aux_dim else None
        if head == "parallel":
            self.queries = nn.Parameter(torch.randn(action_chunk * ACTION_DIM + 1, d_model) * 0.02)  # actions, [VALUE]
            self.action_head = nn.Linear(d_model, bins)
            with torch.no_grad():  # a near-uniform first policy: every bin is explored
                self.action_head.weight.mul_(0.01)
                self.action_head.bias.zero_()
        else:
            self.register_buffer("action_ids", self._action_vocabulary(env_spec), persistent=False)
        self.to(torch_dtype)

    def _action_vocabulary(self, env_spec: EnvSpec) -> torch.Tensor:
        """The vocabulary ids of the bins, ascending: the last ``bins`` ids that are neither a special
        token of the tokenizer nor a token of the prompt's image part."""
        rows = self.vlm.get_output_embeddings().weight.shape[0]
        blank = {name: torch.zeros(1, h, w, 3, dtype=torch.uint8) for name, (h, w) in env_spec.cameras.items()}
        reserved = set(self.processor.tokenizer.all_special_ids)
        reserved |= set(self._encode_images(blank)[0].flatten().tolist())
        free = [i for i in range(rows - 1, -1, -1) if i not in reserved][: self.bins]
        if len(free) < self.bins:
            raise ValueError(f"the vocabulary has {rows} entries, too few for {self.bins} action tokens")
        return torch.tensor(sorted(free), dtype=torch.long)

    def published_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: with LoRA the frozen backbone stays out of the weight plane (every
        process loads it from the same directory), so a version is the adapters and heads only."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- encoding ---------------------------------------------------------------------

    def tokenize(self, instructions: list[str]) -> torch.Tensor:
        """The checkpoint's token ids of each instruction, plus one (0 is padding), B×max_instruction_tokens.
        Special tokens are dropped: an image placeholder written in an instruction would ask the model
        for an image that is not there."""
        special = set(self.processor.tokenizer.all_special_ids)
        out = torch.zeros(len(instructions), self.max_instruction_tokens, dtype=torch.long)
        for row, text in enumerate(instructions):
            ids = [i for i in self.processor.tokenizer(text, add_special_tokens=False)["input_ids"] if i not in special]
            ids = ids[: self.max_instruction_tokens]
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long) + 1
        return out

    def _encode_images(self, images: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The processor's image part of the prompt: its ids B×P and the model's pixel inputs."""
        frames = [images[name].cpu().numpy() for name in self.camera_names]
        batch = len(frames[0])
        encoded = self.processor(text=[self.image_text] * batch, images=[[f[b] for f in frames] for b in range(batch)],
                                 return_tensors="pt")
        extras = {k: v for k, v in encoded.items() if k not in PROCESSOR_ONLY}
        return encoded["input_ids"], extras

    def _prompt(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The prompt's embeddings B×S×d, left-padded, ending with the proprio token; its attention mask
        B×S; the model's pixel inputs."""
        instruction = obs.instruction
        check_observation(obs, self.camera_names, self.max_instruction_tokens)
        embed = self.vlm.get_input_embeddings()
        device, dtype = embed.weight.device, self.value_head.weight.dtype
        prefix, extras = self._encode_images(obs.images)
        extras = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                  for k, v in extras.items()}
        words = instruction != 0
        parts = [embed(prefix.to(device)), embed((instruction - 1).clamp(min=0)) * words.unsqueeze(-1),
                 self.proprio(obs.proprio.to(dtype)).unsqueeze(1)]
        embeds = torch.cat([p.to(dtype) for p in parts], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
        mask[:, prefix.shape[1] : prefix.shape[1] + instruction.shape[1]] = words
        order = torch.argsort(mask, dim=1, stable=True)  # padding first, the rest in its order
        return embeds.gather(1, order.unsqueeze(-1).expand_as(embeds)), mask.gather(1, order), extras

    def _hidden(self, obs: ObsBatch, tail: torch.Tensor) -> torch.Tensor:
        """Last hidden states of the prompt's last token (proprio) and of ``tail`` B×T×d: B×(1+T)×d."""
        embeds, mask, extras = self._prompt(obs)
        embeds = torch.cat([embeds, tail.to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], tail.shape[1])], dim=1)
        out = self.vlm.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **extras)
        return out.last_hidden_state[:, -(1 + tail.shape[1]) :]

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states …×d -> float32 logits over the bins, …×bins."""
        if self.head == "parallel":
            return self.action_head(hidden).float()
        lm_head = self.vlm.get_output_embeddings()
        bias = None if lm_head.bias is None else lm_head.bias[self.action_ids]
        return F.linear(hidden, lm_head.weight[self.action_ids], bias).float()

    def _scores(self, obs: ObsBatch, tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Action log-probs B×(K·7)×bins (of ``tokens`` given, for the tokens head) and the value token's
        hidden state B×d."""
        batch, n = obs.proprio.shape[0], self.action_chunk * ACTION_DIM
        if self.head == "parallel":
            hidden = self._hidden(obs, self.queries.expand(batch, -1, -1))[:, 1:]
            return F.log_softmax(self._action_logits(hidden[:, :-1]), dim=-1), hidden[:, -1]
        assert tokens is not None
        previous = self.vlm.get_input_embeddings()(self.action_ids[tokens.reshape(batch, n)[:, :-1]])
        hidden = self._hidden(obs, previous)  # the proprio token predicts the first action token
        return F.log_softmax(self._action_logits(hidden), dim=-1), hidden[:, 0]

    def _generate(self, obs: ObsBatch, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tokens head's action tokens B×(K·7), their log-probs and the value token's hidden state: the
        prompt in one forward, then one token per forward on its key-value cache (the positions are
        those of the whole sequence, as :meth:`evaluate` computes it in one)."""
        embed = self.vlm.get_input_embeddings()
        embeds, mask, extras = self._prompt(obs)
        out = self.vlm.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **extras)
        value_hidden = hidden = out.last_hidden_state[:, -1]
        tokens, logprobs = [], []
        for i in range(self.action_chunk * ACTION_DIM):
            logp = F.log_softmax(self._action_logits(hidden), dim=-1)
            token = logp.argmax(dim=-1) if deterministic else sample_tokens(logp)
            tokens.append(token)
            logprobs.append(logp.gather(-1, token.unsqueeze(-1)))
            if i + 1 < self.action_chunk * ACTION_DIM:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                out = self.vlm.base_model(inputs_embeds=embed(self.action_ids[token]).unsqueeze(1), attention_mask=mask,
                                          past_key_values=out.past_key_values, use_cache=True)
                hidden = out.last_hidden_state[:, -1]
        return torch.stack(tokens, dim=1), torch.cat(logprobs, dim=1), value_hidden

    def _value(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden).squeeze(-1).float()

    # -- Policy interface --------------------------------------------------------------

    def act(self, obs: ObsBatch, deterministic: bool = False) -> ActOutput:
        if self.head == "tokens":
            tokens, logprob, val = self._generate(obs, deterministic)
        else:
            logp, val = self._scores(obs, None)
            tokens = logp.argmax(dim=-1) if deterministic else sample_tokens(logp)
            logprob = logp.gather(-1, tokens.unsqueeze(-1)).flatten(1)
        tokens = tokens.view(-1, self.action_chunk, ACTION_DIM)
        return ActOutput(tokens=tokens, actions=self.action_tokenizer.decode(tokens), logprob=logprob,
                         value=self._value(val))

    def evaluate(self, obs: ObsBatch, tokens: torch.Tensor) -> EvalOutput:
        logp, val = self._scores(obs, tokens.long())
        flat = tokens.long().reshape(logp.shape[0], -1)
        logprob = logp.gather(-1, flat.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(dim=-1)
        aux = None if self.aux_head is None else self.aux_head(val).float()
        return EvalOutput(logprob=logprob, entropy=entropy, value=self._value(val), aux=aux)

    def value(self, obs: ObsBatch) -> torch.Tensor:
        batch = obs.proprio.shape[0]
        if self.head == "parallel":
            return self._value(self._hidden(obs, self.queries.expand(batch, -1, -1))[:, -1])
        empty = self.proprio.weight.new_zeros(batch, 0, self.proprio.weight.shape[0])
        return self._value(self._hidden(obs, empty)[:, 0])
