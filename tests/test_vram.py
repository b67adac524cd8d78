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
