"""One job on several devices (docs/planes.md), run on CPU devices: learner ranks joined by Gloo,
actor replicas in processes of their own, versions copied along the replication plan. The same code
runs on GPUs; here every path runs on 2 cores."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest
import torch

from dvla import metric_names as m
from dvla.spec import SpecError, spec_from_dict, spec_to_dict
from dvlad.lanes.pipeline import JobFailed, Pipeline
from dvlad.lanes.ranks import LearnerRanks
from dvlad.lanes.replica import knobs
from dvlad.ports import free_port

pytestmark = pytest.mark.slow  # whole jobs of several processes


def multi(small_spec, layout: str, devices: int, learners: int = 0, **overrides):
    spec = small_spec("async", **overrides)
    spec.placement.layout, spec.placement.cpu_devices, spec.placement.learner_gpus = layout, devices, learners
    spec.env.num_envs, spec.env.workers = 8, 2  # one worker per replica
    return spec_from_dict(spec_to_dict(spec))  # as the job runner gets it: validated


def run(spec, tmp_path):
    rows = []
    pipeline = Pipeline(spec, tmp_path, on_progress=lambda p: rows.append(p.values))
    summary = pipeline.run()
    return pipeline, rows, summary


def test_two_learner_ranks_and_two_replicas_train_reach_with_versions_in_order(small_spec, tmp_path):
    spec = multi(small_spec, "decoupled", 4, learners=2, train__total_env_steps=960)
    spec.env.name, spec.env.args = "reach", {}
    pipeline, rows, summary = run(spec, tmp_path)
    layout = pipeline.layout
    assert layout.learner_devices == (0, 1) and layout.actor_devices == (2, 3)
    assert [(c.src, c.dst) for c in layout.replication.copies] == [(0, 2), (0, 3)]  # CPU devices: a star of two
    assert summary[m.ENV_STEPS] >= spec.train.total_env_steps
    # every update trained on both ranks' shares (the job checks each update that the ranks' weights
    # are identical: it would have failed on a divergence), with versions in order
    assert [r[m.VERSION] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r[m.SAMPLES] == spec.env.num_envs * spec.pipeline.segment_steps for r in rows)  # all replicas
    _, max_staleness = knobs(spec)
    assert all(r[m.STALENESS_MAX] <= max_staleness for r in rows)  # never beyond the gate, on any replica
    acting = [r[m.ACTING_VERSION] for r in rows]
    assert acting == sorted(acting) and acting[-1] >= len(rows) - 1 - max_staleness
    assert all(len(r[m.PUBLISH_MS_REPLICAS]) == 2 for r in rows if m.PUBLISH_MS_REPLICAS in r)
    assert all(torch.isfinite(torch.tensor(r[m.LOSS])) for r in rows)
    assert rows[-1][m.EPISODES] > 0 and pipeline.checkpoint is not None


def test_colocated_ranks_each_publish_to_the_replica_beside_them(small_spec, tmp_path):
    spec = multi(small_spec, "colocated", 2, train__total_env_steps=640)
    pipeline, rows, _ = run(spec, tmp_path)
    assert pipeline.layout.learner_devices == pipeline.layout.actor_devices == (0, 1)
    assert [(c.src, c.dst, c.link) for c in pipeline.layout.replication.copies] == [(0, 0, "X"), (1, 1, "X")]
    assert [r[m.VERSION] for r in rows] == list(range(1, len(rows) + 1))
    assert max(r[m.ACTING_VERSION] for r in rows) >= 1  # both ranks' publications reached their replicas


def test_a_killed_replica_ends_the_job_saying_which(small_spec, tmp_path):
    spec = multi(small_spec, "decoupled", 3, learners=1, train__total_env_steps=10**9)
    pipeline = Pipeline(spec, tmp_path)
    failure: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(pipeline.run, failure), daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    while "actor replica 1" not in pipeline.lanes or pipeline.actor is None or pipeline.actor.env_steps < 100:
        assert time.monotonic() < deadline and thread.is_alive(), failure
        time.sleep(0.2)
    pid = pipeline.lanes["actor replica 1"].pid
    os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    assert isinstance(failure[0], JobFailed)
    assert str(failure[0]) == f"actor replica 1 (pid {pid}) killed by signal SIGKILL"


def _catch(fn, into: list) -> None:
    try:
        fn()
    except BaseException as exc:
        into.append(exc)


def _rank(rank: int, rendezvous: str, nudge: bool, out) -> None:
    ranks = LearnerRanks(rank, 2, rendezvous, torch.device("cpu"))
    try:
        flat = torch.arange(10, dtype=torch.float32)
        params = [torch.nn.Parameter(flat[:4].view(2, 2)), torch.nn.Parameter(flat[4:])]
        ranks.bind(params, flat)
        params[0].grad.fill_(1.0 + rank)  # rank 0's 3 samples say 1, rank 1's 1 sample says 2
        params[1].grad.fill_(0.0)
        total = ranks.average_gradients(3 if rank == 0 else 1)
        out.put((rank, total, ranks.grads.tolist()))
        if nudge and rank == 1:
            flat[0] += 1e-6
        try:
            ranks.check_identical(flat, 1)
            out.put((rank, "identical"))
        except RuntimeError as exc:
            out.put((rank, str(exc)))
    finally:
        ranks.close()


@pytest.mark.parametrize("nudge", [False, True])
def test_ranks_average_gradients_by_samples_and_catch_a_divergence(nudge):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=_rank, args=(r, rendezvous, nudge, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in range(4)]
    for p in procs:
        p.join(30)
    averaged = [g for g in got if len(g) == 3]
    assert all(total == 4 for _, total, _ in averaged)
    assert all(grads[:4] == [pytest.approx(1.25)] * 4 and grads[4:] == [0.0] * 6 for *_, grads in averaged)
    verdicts = {g[1] for g in got if len(g) == 2}
    assert verdicts == ({"identical"} if not nudge else {v for v in verdicts if "diverged at version 1" in v})


def test_validation_refuses_splits_that_cannot_run(small_spec):
    spec = spec_to_dict(small_spec("async"))
    spec["placement"] = {"cpu_devices": 3, "learner_gpus": 1}  # 2 workers cannot divide among 2 replicas? they can
    spec_from_dict(spec)
    spec["env"]["workers"] = 3
    spec["env"]["num_envs"] = 6
    with pytest.raises(SpecError, match="no split"):
        spec_from_dict(spec)
    spec["placement"] = {"cpu_devices": 2}
    spec["resources"] = {"gpus": 1}
    with pytest.raises(SpecError, match="stands in for GPUs"):
        spec_from_dict(spec)


def test_a_checkpoint_of_two_ranks_resumes_on_one(small_spec, tmp_path):
    """One file holds the whole learner (weights, optimizer state, counters), whatever the rank count."""
    spec = multi(small_spec, "decoupled", 4, learners=2, train__total_env_steps=320)
    _, first, _ = run(spec, tmp_path)
    again = small_spec("async", train__total_env_steps=960, train__resume=True)
    _, rows, _ = run(again, tmp_path)
    assert rows[0][m.VERSION] == first[-1][m.VERSION] + 1 and rows[0][m.ENV_STEPS] > first[-1][m.ENV_STEPS]
