"""The pool arithmetic behind ``dvla top``'s memory bars (the GPU readings are in test_gpu)."""

from __future__ import annotations

import torch
from torch import nn

from dvla.metric_names import GPU_ACTIVATION_BYTES, GPU_WEIGHT_BYTES
from dvlad.lanes.vram import job_pools, tensor_bytes
from dvlad.policies.base import flatten_parameters


def test_views_of_one_flat_buffer_count_once_and_distinct_tensors_add_up():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))  # 36 + 10 float32 parameters
    flat = flatten_parameters(model)
    assert tensor_bytes([flat, *model.parameters()]) == 46 * 4
    extra = torch.zeros(5, dtype=torch.bfloat16)
    assert tensor_bytes([*model.parameters(), extra, None]) == 46 * 4 + 5 * 2


def test_a_learner_process_brings_its_own_peak_and_a_learner_thread_shares_the_actors():
    actor_weights, actor_peak = 100, 160  # 60 bytes of the actor's activations at its peak
    process = job_pools(actor_weights, actor_peak, learner_weights=400, learner_peak=1000)
    assert process == {GPU_WEIGHT_BYTES: 500.0, GPU_ACTIVATION_BYTES: 60.0 + 600.0}
    thread = job_pools(actor_weights, 1200, learner_weights=400, learner_peak=None)  # one allocator holds both
    assert thread == {GPU_WEIGHT_BYTES: 500.0, GPU_ACTIVATION_BYTES: 700.0}
    assert job_pools(100, 50, 400, None)[GPU_ACTIVATION_BYTES] == 0.0  # never negative


def test_an_activation_pool_that_grows_at_each_of_five_updates_is_flagged_and_a_steady_one_is_not():
    from dvla.metric_names import GPU_ACTIVATION_GROWING
    from dvlad.lanes.vram import activation_growth

    creeping = [100.0, 103, 106, 110, 114, 118]  # +3-4% every update
    assert activation_growth(creeping) == {GPU_ACTIVATION_GROWING: 1.0}
    assert activation_growth(creeping[1:]) == {GPU_ACTIVATION_GROWING: 0.0}  # too few updates yet
    assert activation_growth([100.0, 103, 106, 106.5, 110, 114])[GPU_ACTIVATION_GROWING] == 0.0  # paused once
    assert activation_growth([100.0, 60, 100, 60, 100, 60])[GPU_ACTIVATION_GROWING] == 0.0  # batch sizes vary


def test_dvla_top_marks_a_growing_activation_pool_from_the_jobs_rows():
    from dvla.top.render import pools_cell
    from dvla.top.snapshot import GpuJob, GpuView, PoolUse, pools_of

    gib = 1 << 30
    job = GpuJob("#1 ana/x", PoolUse(6 * gib), PoolUse(20 * gib), growing=True)
    pools = pools_of([job], memory_used=30 * gib)
    assert pools.growing and not pools_of([GpuJob("#1 ana/x", PoolUse(6 * gib), PoolUse(20 * gib))], 30 * gib).growing
    gpu = GpuView(0, "H200", None, 30 * gib, 140 * gib, None, None, None, "#1 ana/x", pools, (job,))
    assert pools_cell(gpu) == "weight 6.0 GiB · act 20.0 GiB ↑ · other 4.0 GiB"
    assert pools_cell(gpu, "short") == "█6.0 ▓20.0 ↑ ▒4.0 GiB"


def test_each_row_carries_the_largest_pools_so_far_for_top_and_metrics_to_compare_with_the_cap():
    from dvla.metric_names import GPU_ACTIVATION_PEAK_BYTES, GPU_WEIGHT_PEAK_BYTES
    from dvlad.lanes.vram import running_peaks

    peaks: dict[str, float] = {}
    rows = [{GPU_WEIGHT_BYTES: 5.0, GPU_ACTIVATION_BYTES: 30.0}, {GPU_WEIGHT_BYTES: 5.0, GPU_ACTIVATION_BYTES: 20.0},
            {GPU_WEIGHT_BYTES: 6.0, GPU_ACTIVATION_BYTES: 25.0}]
    seen = [running_peaks(peaks, row) for row in rows]
    assert [s[GPU_ACTIVATION_PEAK_BYTES] for s in seen] == [30.0, 30.0, 30.0]  # a smaller update keeps the peak
    assert [s[GPU_WEIGHT_PEAK_BYTES] for s in seen] == [5.0, 5.0, 6.0]
    assert running_peaks(peaks, {"env_steps": 1.0}) == {}  # a job on the CPU reports no pools
