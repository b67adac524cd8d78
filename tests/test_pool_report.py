"""Estimate, budget and measured peak of each GPU pool: in a finished job's summary.json and in the
reason the daemon gives it (``dvla status``)."""

from __future__ import annotations

from dvla import metric_names as m
from dvla.memsize import describe_pools
from dvla.spec import spec_from_dict
from dvlad.gpu.budgets import pool_report
from dvlad.gpu.memory_estimate import estimate
from dvlad.runtime.supervisor import outcome
from dvlad.store import State, Store
from tests.test_daemon_outcome import submitted

GIB = 2**30
JOB = {"resources": {"gpus": 1, "share_gpus": True, "activation_pool": "40GiB"},
       "policy": {"name": "transformer-vla", "args": {"preset": "1b", "patch_size": 16, "lora": {"r": 16}}},
       "env": {"name": "synthetic", "num_envs": 64, "groups": 2, "workers": 16},
       "algo": {"minibatches": 8}, "pipeline": {"segment_steps": 8}}


def test_the_summary_holds_each_pools_estimate_budget_and_peak():
    spec = spec_from_dict(JOB)
    peaks = {m.GPU_WEIGHT_BYTES: 6.1 * GIB, m.GPU_ACTIVATION_BYTES: 27.1 * GIB}
    report = pool_report(spec, peaks, m.GPU_WEIGHT_BYTES, m.GPU_ACTIVATION_BYTES)["gpu_memory"]
    assert report["weight_pool"] == {"estimate": estimate(spec).weight, "budget": None, "peak": 6.1 * GIB}
    assert report["activation_pool"] == {"estimate": estimate(spec).activation, "budget": 40 * GIB,
                                         "peak": 27.1 * GIB}
    assert pool_report(spec, {}, m.GPU_WEIGHT_BYTES, m.GPU_ACTIVATION_BYTES) == {}  # a CPU job has no pools


def test_a_finished_jobs_reason_ends_with_its_pools(tmp_path):
    job = submitted(Store(tmp_path / "db"))
    pools = {"weight_pool": {"estimate": 6.22 * GIB, "budget": None, "peak": 6.1 * GIB},
             "activation_pool": {"estimate": 25 * GIB, "budget": 40 * GIB, "peak": 27.1 * GIB}}
    state, reason = outcome(job, 0, {"status": "succeeded", "gpu_memory": pools})
    assert state is State.SUCCEEDED and reason.endswith(
        "; weight pool peak 6.10 GiB (estimate 6.22 GiB, budget none), "
        "activation pool peak 27.10 GiB (estimate 25.00 GiB, budget 40.00 GiB)")
    assert describe_pools({"status": "succeeded"}) == ""
