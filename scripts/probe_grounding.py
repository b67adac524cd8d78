"""How fast does tiny-vla learn *where the instruction's object is*? Two auxiliary losses, side by side.

The question behind reach's learning curve: the policy gradient alone did not ground the colour
named in the instruction within 20 minutes (docs/learning.md), so the learner adds an auxiliary
loss on reach's labels (the named cube's image position). This script trains only that part of
the policy, supervised, on the same frames and batches for both losses, and prints the mean
localisation error of the named map (its expected x, y against the label, in image units where
the image spans 2) every few steps:

- ``cross-entropy``: :meth:`TinyVLA.aux_loss`, a classification of the cell holding the label;
- ``regression``: mean squared error of the named map's expected (x, y), the obvious choice.

Batches are as the learner sees them: 16 episodes × 8 consecutive frames (a rollout's rows are
correlated). Run: ``python scripts/probe_grounding.py [--steps 400] [--frames 4000] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dvlad.envs.gl import configure_mujoco_gl
from dvlad.policies import make_policy
from dvlad.policies.base import ObsBatch
from dvlad.policies.tiny_vla import expected_xy
from dvlad.spaces import EnvSpec

FRAMES_PER_EPISODE = 8
EPISODES_PER_BATCH = 16


def collect(frames: int) -> tuple[dict[str, torch.Tensor], list[str], EnvSpec]:
    """Frames of random-action reach episodes with their labels."""
    configure_mujoco_gl()
    from dvlad.envs.reach import ReachEnv

    env, rng = ReachEnv(), np.random.default_rng(0)
    images, proprio, labels, instructions = [], [], [], []
    for episode in range(frames // FRAMES_PER_EPISODE):
        obs = env.reset(seed=episode)
        for _ in range(FRAMES_PER_EPISODE):
            images.append(obs.images["image"])
            proprio.append(obs.proprio)
            labels.append(obs.aux)
            instructions.append(obs.instruction)
            obs = env.step(rng.uniform(-1, 1, 7)).obs
    env.close()
    data = {"image": torch.from_numpy(np.stack(images)), "proprio": torch.from_numpy(np.stack(proprio)),
            "labels": torch.from_numpy(np.stack(labels))}
    return data, instructions, env.spec


def train(loss_name: str, data: dict[str, torch.Tensor], instructions: list[str], spec: EnvSpec, steps: int,
          seed: int, every: int) -> list[tuple[int, float]]:
    torch.manual_seed(seed)
    policy = make_policy("tiny-vla", spec, d_model=32, patch_grid=4)  # as in examples/reach_ppo.toml
    tokens = policy.tokenize(instructions)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
    held_out = torch.arange(len(tokens) - 256, len(tokens))
    episodes = (len(tokens) - 256) // FRAMES_PER_EPISODE
    no_tokens = torch.zeros(len(tokens), 1, 7, dtype=torch.long)

    def named(idx: torch.Tensor) -> torch.Tensor:
        obs = ObsBatch(images={"image": data["image"][idx]}, proprio=data["proprio"][idx], instruction=tokens[idx])
        return policy.evaluate(obs, no_tokens[idx]).aux

    curve = []
    for step in range(steps + 1):
        if step % every == 0:
            with torch.no_grad():
                error = (expected_xy(named(held_out)) - data["labels"][held_out]).norm(dim=1).mean()
            curve.append((step, float(error)))
        first = torch.randint(0, episodes, (EPISODES_PER_BATCH,)) * FRAMES_PER_EPISODE
        idx = (first[:, None] + torch.arange(FRAMES_PER_EPISODE)).flatten()
        prediction = named(idx)
        if loss_name == "cross-entropy":
            loss = policy.aux_loss(prediction, data["labels"][idx])
        else:
            loss = torch.nn.functional.mse_loss(expected_xy(prediction), data["labels"][idx])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        optimizer.step()
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="gradient steps per loss")
    parser.add_argument("--frames", type=int, default=4000, help="reach frames to collect")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=50, help="report the error every N steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.monotonic()
    data, instructions, spec = collect(args.frames)
    print(f"{len(instructions)} frames in {time.monotonic() - t0:.0f} s; localisation error "
          f"(mean distance, image width = 2; a cube is ~0.2 wide):")
    curves = {name: train(name, data, instructions, spec, args.steps, args.seed, args.every)
              for name in ("cross-entropy", "regression")}
    print("step   " + "  ".join(f"{name:>13}" for name in curves))
    for row in zip(*curves.values(), strict=True):
        print(f"{row[0][0]:>4}   " + "  ".join(f"{error:>13.3f}" for _, error in row))


if __name__ == "__main__":
    main()
