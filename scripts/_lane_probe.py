"""Each lane's cost measured alone, with the job's own code and sizes (for bench_pipeline.py).

  sample  — the env workers stepping every group with random actions (no inference),
  render  — on a GPU, the GPU time of that sampling (NVML's utilisation while it runs × its
            seconds per step): the env workers' EGL rendering, which shares the GPU with the
            infer, learn and publish lanes (0 for envs that draw on the CPU),
  infer   — the actor's replica acting on one env group's batch (host in, host out),
  learn   — one learner update on a rollout of the job's size,
  publish — one weight publication through the distribute lane and the weight plane.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from tempfile import TemporaryDirectory

import numpy as np
import torch

from dvla.spec import JobSpec
from dvlad.lanes.actor import Actor, ActorConfig
from dvlad.lanes.device import Placement
from dvlad.lanes.distribute import Distributor
from dvlad.lanes.env_workers import EnvWorkerPool
from dvlad.lanes.learner import Learner, LearnerConfig
from dvlad.lanes.timeline import LaneTimeline
from dvlad.lanes.trajectory import SegmentShape, TrajectoryQueue
from dvlad.lanes.weights import WeightPlane
from dvlad.policies import build_policy
from dvlad.spaces import ACTION_DIM, image_key


def gpu_memory_used(index: int) -> int | None:
    """Bytes of GPU ``index``'s memory in use by every process (NVML), or None without NVML: the
    sample lane's share is the difference with its pool open and closed (EGL contexts' buffers)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
    except Exception:  # no driver, no library
        return None


class NvmlSampler(threading.Thread):
    """NVML's GPU utilisation every 100 ms while a mode runs (None where NVML is absent)."""

    def __init__(self, index: int) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []  # (time.monotonic(), utilisation %)
        self._stop_event = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(
                pynvml.nvmlDeviceGetHandleByIndex(index)).gpu
        except Exception:  # no driver, no library: the interval-based figure stands alone
            self._read = None

    def run(self) -> None:
        while self._read is not None and not self._stop_event.wait(0.1):
            self.samples.append((time.monotonic(), float(self._read())))

    def mean(self, since: float, until: float) -> float | None:
        """Mean utilisation over the measured window (model building and start-up left out)."""
        self._stop_event.set()
        inside = [u for t, u in self.samples if since <= t <= until]
        return float(np.mean(inside)) / 100 if inside else None


@contextlib.contextmanager
def open_pool(spec: JobSpec, workers: int | None = None, num_envs: int | None = None) -> Iterator[EnvWorkerPool]:
    pool = EnvWorkerPool(spec.env.name, dict(spec.env.args), num_envs=num_envs or spec.env.num_envs,
                         groups=spec.env.groups, workers=workers or spec.env.workers,
                         action_chunk=spec.policy.action_chunk, seed=spec.job.seed, nice=spec.env.nice)
    try:
        yield pool
    finally:
        pool.close()


def sample_seconds_per_step(pool: EnvWorkerPool, seconds: float) -> float:
    """Wall seconds per env step with every group stepping at once and no inference."""
    rng = np.random.default_rng(0)
    actions = (pool.envs_per_group, pool.action_chunk, ACTION_DIM)
    steps, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds or not steps:
        for g in range(pool.groups):
            pool.step(g, rng.uniform(-1, 1, actions))
        steps += sum(pool.wait(g).env_steps for g in range(pool.groups))
    return (time.monotonic() - t0) / steps


def sample_and_render(pool: EnvWorkerPool, placement: Placement, seconds: float) -> tuple[float, float]:
    """The sample lane's wall seconds per env step, and on a GPU the GPU seconds of it (NVML's
    utilisation while it runs × its seconds per step: the workers' EGL rendering; 0 on the CPU)."""
    sample_seconds_per_step(pool, min(1.0, seconds / 4))  # warm-up
    nvml = NvmlSampler(placement.device.index or 0) if placement.on_gpu else None
    if nvml is not None:
        nvml.start()
    since = time.monotonic()
    sample = sample_seconds_per_step(pool, seconds)
    render_util = nvml.mean(since, time.monotonic()) if nvml is not None else None
    return sample, sample * (render_util or 0.0)


def sample_scaling(spec: JobSpec, counts: list[int], seconds: float) -> dict[int, dict[str, float]]:
    """Env steps/s of the sample lane alone with 1, 2, 4 … workers, each worker keeping the
    job's envs per worker; efficiency = throughput / (n × one worker's throughput)."""
    per_worker = spec.env.num_envs // spec.env.workers
    rates: dict[int, float] = {}
    for n in counts:
        with open_pool(spec, workers=n, num_envs=per_worker * n) as pool:
            sample_seconds_per_step(pool, 0.5)  # warm-up: first steps, page faults
            rates[n] = 1.0 / sample_seconds_per_step(pool, seconds)
    one = rates[counts[0]] / counts[0]
    return {n: {"steps_per_s": r, "efficiency": r / (n * one)} for n, r in rates.items()}


def _time(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` (synchronised on a GPU), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def lane_costs(spec: JobSpec, placement: Placement, seconds: float) -> dict[str, float]:
    """Seconds per env step of each lane alone, plus publication and raw-copy milliseconds."""
    torch.set_num_threads(spec.resources.torch_threads)
    ctx = mp.get_context("spawn")
    with open_pool(spec) as pool:
        sample, render = sample_and_render(pool, placement, seconds)
        with TemporaryDirectory() as tmp:
            learner = Learner(LearnerConfig(spec, pool.spec, tmp, placement, pool.groups))
        policy, flat = build_policy(spec, pool.spec, placement.device, placement.actor_dtype)
        shape = SegmentShape(spec.pipeline.segment_steps, pool.envs_per_group, spec.policy.action_chunk,
                             policy.max_instruction_tokens)
        traj = TrajectoryQueue.create(ctx, pool.spec, shape, pool.groups)
        plane = WeightPlane.create(ctx, flat.numel(), [placement.device], dtype=placement.actor_dtype)
        try:
            actor_cfg = ActorConfig(shape.steps, 0, True, compile=spec.pipeline.compile_actor)
            actor = Actor(pool, policy, flat, plane, [traj] * pool.groups, actor_cfg, LaneTimeline(),
                          placement=placement)
            obs = pool.read(0)
            batch = actor.observation_batch(obs)
            infer = _time(lambda: actor.act(batch), 20, placement.device) / pool.envs_per_group

            segments = []
            for g in range(pool.groups):  # real observations, every row valid
                seg = {k: v.copy() for k, v in traj.view(g).items()}
                for cam, images in obs.images.items():
                    seg[image_key(cam)][:] = images
                seg["proprio"][:] = obs.proprio
                seg["instruction"][:] = batch.instruction.numpy()
                seg["valid"][:] = True
                seg["env_steps"][:] = spec.policy.action_chunk
                segments.append(seg)
            rollout_steps = shape.steps * spec.env.num_envs * spec.policy.action_chunk
            learn = _time(lambda: learner.update(segments), 2, placement.device) / rollout_steps

            dist = Distributor(plane, placement.device)
            version = iter(range(1, 1 << 30))
            publish_s = _time(lambda: (dist.publish(learner.flat, next(version)), dist.flush()), 10,
                              placement.device)
            dist.close()
            raw = torch.empty_like(flat)
            raw_copy_s = _time(lambda: raw.copy_(flat), 10, placement.device)
            model_params = sum(p.numel() for p in policy.parameters())
        finally:
            traj.close()
            plane.close()
    return {"sample": sample, "render": render, "infer": infer, "learn": learn,
            "publish": publish_s / rollout_steps,
            "publish_ms": publish_s * 1e3, "raw_copy_ms": raw_copy_s * 1e3, "model_params": float(model_params),
            "published_params": float(flat.numel())}
