"""Shared fixtures: small real jobs on the synthetic env (real processes, real torch)."""

from __future__ import annotations

import pytest

from dvlad.envs.gl import configure_mujoco_gl

configure_mujoco_gl()  # before any test module imports mujoco: it fixes its GL backend on import


def pytest_collection_modifyitems(config, items):
    """GPU tests run where torch sees a GPU (the lent machine) and are skipped, saying so, elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def small_spec():
    """A job small enough for 2 cores: synthetic env with a modelled 2 ms step cost."""
    from dvla.spec import JobSpec

    def make(mode: str = "async", **overrides) -> JobSpec:
        spec = JobSpec()
        spec.job.mode = mode
        spec.env.name = "synthetic"
        spec.env.args = {"step_ms": 2.0, "image_size": 16, "cameras": ["image"], "max_episode_steps": 24}
        spec.env.num_envs, spec.env.groups, spec.env.workers = 8, 2, 2
        spec.pipeline.segment_steps = 8
        spec.policy.args = {"d_model": 16, "layers": 1, "heads": 2, "patch_grid": 2}
        spec.algo.update_epochs, spec.algo.minibatches = 1, 2
        spec.train.total_env_steps = 640
        spec.train.resume = False
        for key, value in overrides.items():
            section, name = key.split("__")
            setattr(getattr(spec, section), name, value)
        return spec

    return make


@pytest.fixture
def actor_obs():
    """A random observation batch of the shape a finished pipeline's actor was built (and, with
    ``compile_actor``, compiled) for, on the host like the env workers send it."""
    import torch

    from dvlad.policies.base import ObsBatch

    def make(pipeline) -> ObsBatch:
        spec, n, policy = pipeline.pool.spec, pipeline.pool.envs_per_group, pipeline.actor.policy
        generator = torch.Generator().manual_seed(0)
        return ObsBatch(images={cam: torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=generator)
                                for cam, (h, w) in spec.cameras.items()},
                        proprio=torch.randn(n, spec.proprio_dim, generator=generator),
                        instruction=policy.tokenize(["reach the red cube"] * n))

    return make
