"""Shared fixtures: real dvlads on real sockets, small real jobs on the synthetic env (real processes,
real torch); and the test tiers (``slow``, ``gpu``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dvlad.envs.gl import configure_mujoco_gl
from dvlad.testing import FIXTURE, Dvlad

configure_mujoco_gl()  # before any test module imports mujoco: it fixes its GL backend on import

DAEMON_FIXTURES = {"dvlads", "module_dvlads"}


def pytest_collection_modifyitems(config, items):
    """A test that starts a real dvlad must be marked ``slow`` (the fast loop, ``-m "not slow"``, is only
    fast if none slips in); GPU tests run where torch sees a GPU (the lent machine) and are skipped,
    saying so, elsewhere."""
    unmarked = [item.nodeid for item in items
                if DAEMON_FIXTURES & set(item.fixturenames) and "slow" not in item.keywords]
    if unmarked:
        raise pytest.UsageError(f"these tests start a real dvlad but are not marked slow: {', '.join(unmarked)}")
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Dvlads:
    """Makes real dvlads (:class:`dvlad.testing.Dvlad`, each in its own /tmp directory) and closes every
    one it made: the daemon, the jobs it started, its files."""

    def __init__(self) -> None:
        self.made: list[Dvlad] = []

    def __call__(self, config: str | None = "", *, env: dict[str, str] | None = None, recorded_gpu: bool = False,
                 user_mode: bool = False, start: bool = True) -> Dvlad:
        """A dvlad with ``config`` (TOML that goes on in its ``[daemon]`` table; None: no config file at
        all, as ``dvlad --user`` is started by hand) and ``env``.
        ``recorded_gpu``: replaying the recorded H100 (where the checkout has the recording), as a GPU
        machine's NVML would answer; ``start=False``: the test sets it up (``serve_tcp``) and starts it."""
        if recorded_gpu and FIXTURE.exists():
            env = {"DVLAD_FAKE_TOPOLOGY": str(FIXTURE), **(env or {})}
        daemon = Dvlad(config, env=env, user_mode=user_mode)
        self.made.append(daemon)
        return daemon.start() if start else daemon

    def close(self) -> None:
        for daemon in self.made:
            daemon.close()


@pytest.fixture
def dvlads() -> Iterator[Dvlads]:
    """Real dvlads for one test: ``dvlads(config, env=...)`` starts one; all are closed after the test."""
    made = Dvlads()
    yield made
    made.close()


@pytest.fixture(scope="module")
def module_dvlads() -> Iterator[Dvlads]:
    """Real dvlads that a module's tests share (starting one takes seconds), closed after its last test."""
    made = Dvlads()
    yield made
    made.close()


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
