"""A scripted expert for ``reach``, and demonstrations of it in LIBERO's layout.

Why: behaviour cloning (``algo.name = "bc"``) needs demonstrations, and tests and the demo need them
offline. The expert knows what the policy must find out from pixels and words: the named cube's
position (``ReachEnv.target_position``) and the gripper tip's (``ReachEnv.tip_position``). It moves
straight at the cube, as fast as an action allows, fingers open.

Why noise (DART, Laskey et al. 2017): the expert's straight path reaches a cube in ~3 steps, so its
own demonstrations show only the states on that path, and a cloned policy that drifts off it has
never seen where it is (compounding error). With ``noise`` > 0 the env executes the expert's action
plus Gaussian noise, while the demonstration records the expert's clean action for the state it
visited: the demonstrations then cover the states a policy drifts into, each labelled with the way
back.

    python -m dvlad.envs.reach_expert demos/reach.hdf5 --episodes 2000 --noise 0.5
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


def noisy(action: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``action`` with Gaussian noise of std ``noise`` on its motion (dims 0..2), clipped to [-1, 1]:
    what the env executes while the demonstration records ``action`` itself."""
    executed = action.copy()
    executed[:3] = np.clip(action[:3] + noise * rng.standard_normal(3), -1.0, 1.0)
    return executed


def record(path: str | Path, episodes: int, seed: int = 0, noise: float = 0.0, **env_args: object) -> float:
    """Write ``episodes`` expert episodes of ``ReachEnv(**env_args)`` to ``path``; their success rate.
    With ``noise`` > 0 the env executes :func:`noisy` actions and the file holds the clean ones (DART).
    Only successful episodes are written (a demonstration shows the task done)."""
    if noise < 0:
        raise ValueError(f"noise is a standard deviation, >= 0; got {noise}")
    env = ReachEnv(seed=seed, **env_args)  # type: ignore[arg-type]
    rng = np.random.default_rng([seed, 0xDA27])
    successes = 0
    try:
        with DemoWriter(path) as writer:
            for episode in range(episodes):
                obs = env.reset(seed=seed * 1_000_003 + episode)
                frames, proprio, actions, aux, instruction = [], [], [], [], obs.instruction
                while True:
                    action = expert_action(env)
                    frames.append(obs.images["image"])
                    proprio.append(obs.proprio)
                    aux.append(obs.aux)
                    actions.append(action)
                    result = env.step(noisy(action, noise, rng) if noise else action)
                    obs = result.obs
                    if result.terminated or result.truncated:
                        break
                if result.success:
                    successes += 1
                    writer.add({"image": np.stack(frames)}, np.stack(proprio), np.stack(actions), instruction,
                               np.stack(aux))
    finally:
        env.close()
    return successes / max(episodes, 1)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--episodes", default=100, show_default=True, help="Expert episodes to run (successful ones are kept).")
@click.option("--seed", default=0, show_default=True, help="Seed of the starts.")
@click.option("--noise", default=0.0, show_default=True,
              help="Std of Gaussian noise added to the executed motion (the clean action is recorded: DART).")
@click.option("--image-size", default=64, show_default=True, help="The env's image_size (the job's must match).")
@click.option("--num-objects", default=3, show_default=True, help="The env's num_objects.")
def main(path: Path, episodes: int, seed: int, noise: float, image_size: int, num_objects: int) -> None:
    """Write scripted reach demonstrations to PATH (HDF5, LIBERO's layout) for algo.name = "bc"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = record(path, episodes, seed, noise, image_size=image_size, num_objects=num_objects)
    click.echo(f"{path}: {episodes} expert episodes, success {rate:.2f} (successful ones written)")


if __name__ == "__main__":
    main()
