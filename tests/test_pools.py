"""The dual pool of a job process (dvlad/gpu/pools.py): the cap's one-line reason everywhere, the
separate weight pool and the hard cap on the GPU machine (marked ``gpu``)."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from dvlad.gpu.budgets import Budgets
from dvlad.gpu.pools import GIB, DualPool, PoolOverflow

MIB = 1 << 20


def test_a_pool_over_its_cap_names_the_pool_the_cap_the_peak_and_the_key():
    pools = DualPool(torch.device("cpu"), Budgets(weight=GIB, activation=2 * GIB))
    pools.seal(weight_bytes=GIB // 2)
    pools.check(peak_allocated=GIB // 2 + 2 * GIB)  # exactly at the cap: fine
    with pytest.raises(PoolOverflow) as info:
        pools.check(peak_allocated=GIB // 2 + 3 * GIB)
    assert str(info.value) == ("activation pool over its cap: peak 3.00 GiB > cap 2.00 GiB "
                               "(resources.activation_pool)")
    assert "\n" not in str(info.value)


def test_weights_over_their_budget_name_the_weight_pool_and_a_cpu_job_has_no_pools():
    assert str(PoolOverflow("weight", GIB, 3 * GIB // 2, "resources.weight_pool")) == (
        "weight pool over its cap: peak 1.50 GiB > cap 1.00 GiB (resources.weight_pool)")
    DualPool(torch.device("cpu"), Budgets(weight=GIB)).seal(weight_bytes=2 * GIB)  # budgets are GPU memory
    DualPool(torch.device("cpu"), Budgets()).check(peak_allocated=1 << 50)


@pytest.mark.gpu
def test_weights_live_in_their_own_pool_and_activations_outside_it():
    pools = DualPool(torch.device("cuda"), Budgets())
    assert pools.separate, "torch.cuda.MemPool / use_mem_pool missing on the GPU machine's torch"
    with pools.weights():
        weights = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
    activations = torch.empty(32 * MIB, dtype=torch.uint8, device="cuda")
    in_pool = {b["address"] for s in pools.pool.snapshot() for b in s["blocks"] if b["state"] == "active_allocated"}
    assert weights.data_ptr() in in_pool and activations.data_ptr() not in in_pool
    assert pools.reserved_weights() >= 64 * MIB


def _overflow(queue) -> None:
    """A job process: 256 MiB of weights, a 512 MiB activation cap, then a batch of 1 GiB."""
    pools = DualPool(torch.device("cuda"), Budgets(weight=256 * MIB, activation=512 * MIB))
    with pools.weights():
        weights = torch.ones(256 * MIB, dtype=torch.uint8, device="cuda")
    pools.seal(weights.numel())
    ok = torch.empty(384 * MIB, dtype=torch.uint8, device="cuda")  # within the cap
    del ok
    try:
        torch.empty(GIB, dtype=torch.uint8, device="cuda")
        queue.put("no error")
    except torch.OutOfMemoryError:
        queue.put(str(pools.overflow_from_oom()))


@pytest.mark.gpu
def test_a_job_over_its_activation_cap_fails_alone_and_its_neighbour_keeps_its_memory():
    neighbour = torch.ones(2 * GIB, dtype=torch.uint8, device="cuda")  # this process: the neighbour job
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_overflow, args=(queue,))
    proc.start()
    reason = queue.get(timeout=120)
    proc.join(60)
    assert reason.startswith("activation pool over its cap: peak ") and "cap 512 MiB" in reason, reason
    more = torch.ones(GIB, dtype=torch.uint8, device="cuda")  # the neighbour still allocates and computes
    assert int(neighbour.sum(dtype=torch.int64)) + int(more.sum(dtype=torch.int64)) == 3 * GIB
