"""The GPU lanes, on the GPU machine: device-to-device weight plane, bf16 actor, fused learner.

Marked ``gpu``: skipped (saying so) where torch sees no GPU. CPU CI runs the same code
paths through the CPU placement in every other pipeline test.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from dvlad.lanes.device import placement_for
from dvlad.lanes.distribute import Distributor
from dvlad.lanes.pipeline import Pipeline
from dvlad.lanes.weights import WeightPlane, WeightPlaneHandle

pytestmark = pytest.mark.gpu


def _publish_from_another_process(handle: WeightPlaneHandle, numel: int, seed: int, done) -> None:
    """A learner: fp32 master weights on the GPU, published through the plane's CUDA IPC staging."""
    plane = WeightPlane.attach(handle)
    master = torch.randn(numel, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
    dist = Distributor(plane, "cuda")
    dist.publish(master, 7)
    dist.close()
    done.set()
    plane.close()


def test_a_version_travels_device_to_device_between_processes_in_bf16():
    ctx = mp.get_context("spawn")
    numel = 1 << 20
    plane = WeightPlane.create(ctx, numel, ["cuda"], dtype=torch.bfloat16)
    try:
        done = ctx.Event()
        proc = ctx.Process(target=_publish_from_another_process, args=(plane.handle, numel, 3, done))
        proc.start()
        assert done.wait(120) and plane.wait_for(7, timeout=10)
        proc.join(60)
        actor = torch.full((numel,), float("nan"), device="cuda", dtype=torch.bfloat16)
        assert plane.swap_into(actor, -1) == 7
        expected = torch.randn(numel, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
        assert torch.equal(actor, expected.to(torch.bfloat16))  # every element written, rounded once
    finally:
        plane.close()


@pytest.mark.parametrize(("learner", "compile_actor"), [("process", False), ("thread", False), ("process", True)])
def test_a_job_runs_on_the_gpu_with_a_bf16_actor_and_learns_every_update(small_spec, tmp_path, learner,
                                                                          compile_actor):
    """…with the learner as a process or a thread, and with the actor's forward as CUDA graphs."""
    spec = small_spec("async", resources__device="cuda", pipeline__learner=learner,
                      pipeline__compile_actor=compile_actor)
    placement = placement_for(spec)
    assert placement.on_gpu and placement.actor_dtype == torch.bfloat16
    assert placement.autocast_dtype == torch.bfloat16
    assert placement.learner_thread == (learner == "thread")
    rows = []
    pipeline = Pipeline(spec, tmp_path, on_progress=lambda p: rows.append(p.values))
    summary = pipeline.run()
    assert pipeline.actor is not None and pipeline.actor.flat.is_cuda
    assert pipeline.actor.flat.dtype == torch.bfloat16
    assert summary["env_steps"] >= spec.train.total_env_steps
    assert [r["version"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    assert max(r["acting_version"] for r in rows) >= 1  # published versions reached the GPU actor
    assert all(0.0 < r["gpu_busy"] <= 1.0 for r in rows)  # the union of the GPU lanes, per window
    # the two VRAM pools dvla top draws: at least the actor's replica and the learner's fp32 weights
    flat_bytes = pipeline.actor.flat.numel() * (2 + 4)
    assert all(r["gpu_weight_bytes"] >= flat_bytes and r["gpu_activation_bytes"] > 0 for r in rows)


def test_a_cuda_graph_actor_acts_with_weights_swapped_in_after_capture(small_spec, tmp_path, actor_obs):
    """The compiled actor's graphs were captured during the job; a version swapped in place
    (``WeightPlane.swap_into`` copies into the same buffer) must change what they compute."""
    pipeline = Pipeline(small_spec("async", resources__device="cuda", pipeline__compile_actor=True), tmp_path)
    pipeline.run()
    actor = pipeline.actor
    assert actor is not None
    obs = actor_obs(pipeline)
    before = actor.act(obs)
    noise = torch.randn(actor.flat.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    actor.flat.copy_(actor.flat + 0.05 * noise.to(actor.flat.dtype))
    after = actor.act(obs)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):  # as the learner scores
        eager = actor.policy.evaluate(obs.to("cuda"), after.tokens.to("cuda"))
    assert not torch.allclose(after.value, before.value, atol=1e-2)
    torch.testing.assert_close(after.value.float(), eager.value.float().cpu(), rtol=2e-2, atol=2e-2)


def test_learner_ranks_and_replicas_share_the_one_gpu(small_spec, tmp_path, monkeypatch):
    """The multi-device path on one GPU: four devices that are all cuda:0 (two learner ranks joined by
    Gloo, since NCCL refuses two ranks on one GPU; two replicas, their staging on the GPU)."""
    from dvlad.lanes import pipeline as pipeline_module
    from dvlad.lanes.device import JobDevices

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(pipeline_module, "job_devices", lambda spec, placement: JobDevices((cuda,) * 4, (0, 1, 2, 3),
                                                                                          None))
    spec = small_spec("async", resources__device="cuda", train__total_env_steps=960)
    spec.placement.layout, spec.placement.learner_gpus = "decoupled", 2
    spec.env.num_envs, spec.env.workers = 8, 2
    rows = []
    pipeline = Pipeline(spec, tmp_path, on_progress=lambda p: rows.append(p.values))
    pipeline.run()
    assert pipeline.layout.learner_devices == (0, 1) and pipeline.layout.actor_devices == (2, 3)
    assert [r["version"] for r in rows] == list(range(1, len(rows) + 1))  # the ranks stayed identical: checked
    assert all(r["samples"] == spec.env.num_envs * spec.pipeline.segment_steps for r in rows)
    assert max(r["acting_version"] for r in rows) >= 1 and pipeline.actor.flat.is_cuda
