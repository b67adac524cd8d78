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
