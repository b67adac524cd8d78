"""A scripted expert for ``reach``, and demonstrations of it in LIBERO's layout.

Why: behaviour cloning (``algo.name = "bc"``) needs demonstrations, and tests and the demo need them
offline. The expert knows what the policy must find out from pixels and words: the named cube's
position (``ReachEnv.target_position``) and the gripper tip's (``ReachEnv.tip_position``). It moves
straight at the cube, as fast as an action allows, fingers open.

    python -m dvlad.envs.reach_expert demos/reach.hdf5 --episodes 100
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from dvlad.demos import DemoWriter
from dvlad.envs.reach import ReachEnv
from dvlad.spaces import ACTION_DIM


def expert_action(env: ReachEnv) -> np.ndarray:
    """The step towards the target cube's centre, in units of ``max_delta``, clipped to [-1, 1]."""
    action = np.zeros(ACTION_DIM, dtype=np.float32)
    action[:3] = np.clip((env.target_position - env.tip_position) / env.max_delta, -1.0, 1.0)
    action[6] = -1.0  # open
    return action


def record(path: str | Path, episodes: int, seed: int = 0, **env_args: object) -> float:
    """Write ``episodes`` expert episodes of ``ReachEnv(**env_args)`` to ``path``; their success rate.
    Only successful episodes are written (a demonstration shows the task done)."""
    env = ReachEnv(seed=seed, **env_args)  # type: ignore[arg-type]
    successes = 0
    try:
        with DemoWriter(path) as writer:
            for episode in range(episodes):
                obs = env.reset(seed=seed * 1_000_003 + episode)
                frames, proprio, actions, instruction = [], [], [], obs.instruction
                while True:
                    action = expert_action(env)
                    frames.append(obs.images["image"])
                    proprio.append(obs.proprio)
                    actions.append(action)
                    result = env.step(action)
                    obs = result.obs
                    if result.terminated or result.truncated:
                        break
                if result.success:
                    successes += 1
                    writer.add({"image": np.stack(frames)}, np.stack(proprio), np.stack(actions), instruction)
    finally:
        env.close()
    return successes / max(episodes, 1)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--episodes", default=100, show_default=True, help="Expert episodes to run (successful ones are kept).")
@click.option("--seed", default=0, show_default=True, help="Seed of the starts.")
@click.option("--image-size", default=64, show_default=True, help="The env's image_size (the job's must match).")
@click.option("--num-objects", default=3, show_default=True, help="The env's num_objects.")
def main(path: Path, episodes: int, seed: int, image_size: int, num_objects: int) -> None:
    """Write scripted reach demonstrations to PATH (HDF5, LIBERO's layout) for algo.name = "bc"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = record(path, episodes, seed, image_size=image_size, num_objects=num_objects)
    click.echo(f"{path}: {episodes} expert episodes, success {rate:.2f} (successful ones written)")


if __name__ == "__main__":
    main()
