"""TinyVLA: a small vision-language-action transformer that trains on a CPU.

Why it exists: every lane, loss and test must run without a GPU, with the same
interface and the same shape of model as a real VLA (image patches, instruction
tokens, proprio, a transformer trunk, a categorical head over action bins), so
that the CPU path exercises the real code, only smaller.

Token sequence fed to the trunk, per observation::

    [ACT] [VALUE] proprio  instruction(L)  camera_1 patches(G²) ... camera_C patches(G²)

The action head reads the [ACT] output, the value head the [VALUE] output. Instruction
padding is masked out of attention.

The action head emits OpenVLA-style tokens, 256 bins per action dimension, but its bin
logits are structured: a Gaussian over the bin centres (a mean and a log-std per
dimension) plus a free residual logit per bin, initialised to zero. Why: with 256
independent logits a bin only learns when it is sampled (1 time in 256), so "move
right" is learned bin by bin; with the Gaussian part every sample moves the mean, and
the residual keeps the full expressiveness of a categorical (multimodal actions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dvlad.policies.action_tokens import ActionTokenizer, sample_tokens
from dvlad.policies.base import ActOutput, EvalOutput, ObsBatch, Policy, check_observation
from dvlad.policies.text import WordTokenizer
from dvlad.spaces import ACTION_DIM, EnvSpec


class _ImageEncoder(nn.Module):
    """uint8 B×H×W×3 (+ an instruction embedding) -> B×G²×d patch tokens.

    Three strided convs, then adaptive pooling. Why so small: 64×64 images shrink 8× in
    three cheap convs; the pool makes any camera resolution give the same G×G grid, so
    the trunk never depends on H, W. More ideas, all cheap:
    - CoordConv (Liu et al. 2018): two coordinate channels appended to the pixels, since a
      reaching policy must say *where* the named object is, which translation-equivariant
      convolutions find hard;
    - FiLM (Perez et al. 2018; RT-1 conditions its image encoder the same way): the
      instruction scales and shifts the channels of the second and third conv, so "the
      red cube" is looked for while the image is encoded, not found afterwards by
      attention across two hops;
    - a spatial-softmax keypoint token (Levine et al. 2016, deep visuomotor policies): the
      expected image coordinates of each channel's activation, so "where the highlighted
      object is" reaches the trunk as numbers, not as a pattern over patches;
    - one more keypoint chosen by the instruction: a query from the instruction is matched
      against the first conv's features in every cell (half resolution, where a 6-pixel
      cube still fills cells of its own) and the softmax of those scores, the *named map*,
      gives the expected (x, y) of "what the instruction names" (language-to-pixel
      matching, as in CLIPort and PerAct). The named map's logits are also what the
      auxiliary loss trains (:meth:`TinyVLA.aux_loss`).
    """

    def __init__(self, d_model: int, patch_grid: int) -> None:
        super().__init__()
        width = max(d_model // 2, 8)
        self.conv1 = nn.Conv2d(5, width // 2, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width // 2, width, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(width, d_model, kernel_size=3, stride=2, padding=1)
        self.film = nn.Linear(d_model, 2 * (width + d_model))
        nn.init.normal_(self.film.weight, std=0.1)  # near the identity, but not symmetric
        nn.init.zeros_(self.film.bias)
        self.query = nn.Linear(d_model, width // 2)  # instruction -> what to look for in conv1's cells
        self.pool = nn.AdaptiveAvgPool2d(patch_grid)
        self.keypoints = nn.Linear(2 * d_model + 2, d_model)
        self.widths = (width, d_model)

    def forward(self, images: torch.Tensor, instruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the tokens B×(G²+1)×d and the named map's logits B×h₁×w₁ (h₁, w₁ = H/2, W/2)."""
        x = images.permute(0, 3, 1, 2).float().div(255.0)  # B×3×H×W (channels-last in memory)
        b, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        x = F.relu(self.conv1(torch.cat([x, ys, xs], dim=1)))
        named_logits = torch.einsum("bc,bchw->bhw", self.query(instruction), x)
        named_xy = expected_xy(named_logits)
        width, d_model = self.widths
        gamma2, beta2, gamma3, beta3 = self.film(instruction).split([width, width, d_model, d_model], dim=1)
        x = F.relu(self.conv2(x) * (1 + gamma2[:, :, None, None]) + beta2[:, :, None, None])
        x = self.conv3(x) * (1 + gamma3[:, :, None, None]) + beta3[:, :, None, None]
        attention = x.flatten(2).softmax(dim=-1)  # B×d×(h·w): where each channel fires
        grid_y = F.adaptive_avg_pool2d(ys[:1], x.shape[-2:]).flatten()  # the coordinates of
        grid_x = F.adaptive_avg_pool2d(xs[:1], x.shape[-2:]).flatten()  # each feature cell
        points = torch.cat([attention @ grid_x, attention @ grid_y, named_xy], dim=1)  # B×(2d+2) x, y
        patches = self.pool(x).flatten(2).transpose(1, 2)  # B×G²×d
        return torch.cat([patches, self.keypoints(points).unsqueeze(1)], dim=1), named_logits


def expected_xy(named_logits: torch.Tensor) -> torch.Tensor:
    """B×h×w map logits -> B×2 expected (x, y) of its softmax over the cell centres, in the
    image's normalised coordinates (x right, y down, [-1, 1]), which reach's labels use too."""
    h, w = named_logits.shape[-2:]
    ys = (torch.arange(h, device=named_logits.device, dtype=torch.float32) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, device=named_logits.device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
    p = named_logits.flatten(1).softmax(-1)
    return torch.stack([p @ xs.repeat(h), p @ ys.repeat_interleave(w)], dim=1)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as a plain function, so nn.TransformerEncoderLayer never takes its fused fast path.

    Why: in eval mode under no_grad that path swaps in other kernels, so the actor
    and the learner would run different code for the same weights (measured: values
    differ in the last bits), and on this CPU it was slower (about 9.5 against 7 ms for
    act at batch 8). One code path everywhere keeps behaviour log-probs exact.
    Passing ``F.gelu`` or ``"gelu"`` would re-enable it.
    """
    return F.gelu(x)


class TinyVLA(Policy):
    """A small VLA policy for CPU runs and tests; see the module docstring for the layout."""

    def __init__(
        self,
        env_spec: EnvSpec,
        action_chunk: int = 1,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        patch_grid: int = 8,
        vocab_size: int = 1024,
        max_instruction_tokens: int = 16,
        bins: int = 256,
        initial_std: float = 0.5,
    ) -> None:
        super().__init__()
        if action_chunk < 1:
            raise ValueError(f"action_chunk must be at least 1, got {action_chunk}")
        if not env_spec.cameras:
            raise ValueError("TinyVLA needs at least one camera in the env spec")
        self.action_chunk = action_chunk
        self.max_instruction_tokens = max_instruction_tokens
        self.bins = bins
        self.camera_names = sorted(env_spec.cameras)
        """Fixed camera order; a ModuleList because camera names may hold dots."""
        self.text_tokenizer = WordTokenizer(vocab_size, max_instruction_tokens)
        self.action_tokenizer = ActionTokenizer(bins)

        self.encoders = nn.ModuleList(_ImageEncoder(d_model, patch_grid) for _ in self.camera_names)
        self.patch_row = nn.Parameter(torch.randn(patch_grid, 1, d_model) * 0.02)
        self.patch_col = nn.Parameter(torch.randn(1, patch_grid, d_model) * 0.02)
        self.keypoint_pos = nn.Parameter(torch.randn(1, d_model) * 0.02)  # marks the keypoint token
        self.camera_embed = nn.Parameter(torch.randn(len(self.camera_names), d_model) * 0.02)
        self.word_embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.word_pos = nn.Parameter(torch.randn(max_instruction_tokens, d_model) * 0.02)
        self.proprio = nn.Linear(env_spec.proprio_dim, d_model)
        self.queries = nn.Parameter(torch.randn(2, d_model) * 0.02)  # [ACT], [VALUE]

        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=2 * d_model,
            dropout=0.0,
            activation=_gelu,
            batch_first=True,
            norm_first=True,
        )
        self.trunk = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.action_head = nn.Linear(d_model, action_chunk * ACTION_DIM * 2)  # per dim: mean, log-std
        self.bin_residual = nn.Linear(d_model, action_chunk * ACTION_DIM * bins)  # free logit per bin
        self.value_head = nn.Linear(d_model, 1)
        self.aux_dim = env_spec.aux_dim
        """2: the env labels the named object's image position (x, y in [-1, 1], y down), which
        the named map predicts; other labels this policy cannot predict, and ignores."""
        self.register_buffer("bin_centres", self.action_tokenizer.decode(torch.arange(bins)), persistent=False)
        with torch.no_grad():  # a broad first policy centred on "stay": every bin is explored
            self.action_head.weight.mul_(0.01)
            self.action_head.bias.zero_()
            self.action_head.bias.view(-1, 2)[:, 1] = math.log(initial_std)
            self.bin_residual.weight.zero_()
            self.bin_residual.bias.zero_()

    # -- encoding ---------------------------------------------------------------------

    def tokenize(self, instructions: list[str]) -> torch.Tensor:
        return self.text_tokenizer(instructions)

    def _features(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trunk outputs of the [ACT] and [VALUE] tokens, each B×d, and the first camera's
        named-map logits B×h₁×w₁."""
        batch = obs.proprio.shape[0]
        instruction = obs.instruction
        length = instruction.shape[1]
        check_observation(obs, self.camera_names, self.max_instruction_tokens)

        pos = torch.cat([(self.patch_row + self.patch_col).flatten(0, 1), self.keypoint_pos])  # (G²+1)×d
        words = self.word_embed(instruction)
        present = (instruction != 0).unsqueeze(-1).float()
        summary = (words * present).sum(1) / present.sum(1).clamp(min=1.0)  # mean word embedding, for FiLM
        parts = [
            self.queries.expand(batch, -1, -1),
            self.proprio(obs.proprio.float()).unsqueeze(1),
            words + self.word_pos[:length],
        ]
        first_named_map = None
        for i, (name, encoder) in enumerate(zip(self.camera_names, self.encoders, strict=True)):
            camera_tokens, named_logits = encoder(obs.images[name], summary)
            parts.append(camera_tokens + pos + self.camera_embed[i])
            first_named_map = named_logits if first_named_map is None else first_named_map
        tokens = torch.cat(parts, dim=1)

        pad = torch.zeros(batch, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        pad[:, 3 : 3 + length] = instruction == 0
        out = self.trunk(tokens, src_key_padding_mask=pad)
        return out[:, 0], out[:, 1], first_named_map

    def _heads(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Action log-probs B×K×7×bins, value B and the named-map logits B×h₁×w₁."""
        act, val, named_logits = self._features(obs)
        mean_logstd = self.action_head(act).float().view(-1, self.action_chunk, ACTION_DIM, 2, 1)
        mean, std = torch.tanh(mean_logstd[..., 0, :]), mean_logstd[..., 1, :].clamp(-5.0, 1.0).exp()
        logits = -0.5 * ((self.bin_centres - mean) / std) ** 2  # a Gaussian over the bins …
        logits = logits + self.bin_residual(act).float().view_as(logits)  # … that any bin can leave
        return F.log_softmax(logits, dim=-1), self.value_head(val).squeeze(-1).float(), named_logits

    # -- Policy interface --------------------------------------------------------------

    def act(self, obs: ObsBatch, deterministic: bool = False) -> ActOutput:
        logp, value, _ = self._heads(obs)
        tokens = logp.argmax(dim=-1) if deterministic else sample_tokens(logp)
        logprob = logp.gather(-1, tokens.unsqueeze(-1)).flatten(1)
        actions = self.action_tokenizer.decode(tokens)
        return ActOutput(tokens=tokens, actions=actions, logprob=logprob, value=value)

    def evaluate(self, obs: ObsBatch, tokens: torch.Tensor) -> EvalOutput:
        logp, value, named_logits = self._heads(obs)
        logprob = logp.gather(-1, tokens.long().unsqueeze(-1)).flatten(1)
        entropy = -(logp.exp() * logp).sum(dim=-1).flatten(1)
        aux = named_logits.float() if self.aux_dim == 2 else None
        return EvalOutput(logprob=logprob, entropy=entropy, value=value, aux=aux)

    def aux_loss(self, prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the named map against the cell holding the labelled point.

        Why not a regression of the map's expected (x, y): the named object covers ~1% of
        the cells, so the expectation hardly moves when its cells' scores do, and the loss
        sits on a plateau for hundreds of steps; a classification of "which cell" gives
        every cell a gradient from the first step (docs/learning.md).
        """
        h, w = prediction.shape[-2:]
        col = ((labels[:, 0] + 1) * (w / 2)).long().clamp(0, w - 1)
        row = ((labels[:, 1] + 1) * (h / 2)).long().clamp(0, h - 1)
        return F.cross_entropy(prediction.flatten(1), row * w + col)

    def value(self, obs: ObsBatch) -> torch.Tensor:
        _, val, _ = self._features(obs)
        return self.value_head(val).squeeze(-1).float()
