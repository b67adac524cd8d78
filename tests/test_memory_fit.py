"""Memory-fit placement (dvlad/sched/memory_fit.py through dvlad.sched.plan): jobs that share GPUs
packed by their budgets, on the recorded H100 machine's memory size; every decision checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

from dvlad.sched import Capacity, Cluster, Limits, QueuedJob, plan
from dvlad.sched.memory_fit import MemoryAsk, SharedGpus

GIB = 2**30
RECORDED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "gpu" / "h100-x1" / "topology.json"
H100 = 85_520_809_984
"""NVML's memory_total of the recorded H100 80GB HBM3 (shared/fixtures/gpu/h100-x1): 79.65 GiB."""


def test_the_recorded_h100_has_the_memory_these_tests_use():
    if RECORDED.exists():  # the shared fixtures sit beside the checkout on the development machine
        assert json.loads(RECORDED.read_text())["devices"][0]["memory_total"] == H100


def ask(gib: float) -> MemoryAsk:
    """A sharing job's ask: ``gib`` in all, of it 4 GiB weights and 2 GiB outside the pools."""
    return MemoryAsk(4 * GIB, int(gib * GIB) - 6 * GIB, 2 * GIB)


def job(id: int, memory: MemoryAsk | None, user: str = "ana", gpus: int = 1) -> QueuedJob:
    return QueuedJob(id, user, (), 0, gpus, 1, memory)


def cluster(gpus: int, taken: dict[int, int] | None = None, busy: set[int] = frozenset()) -> Cluster:
    free = frozenset(set(range(gpus)) - set(taken or {}) - set(busy))
    return Cluster(free, 64, capacity=Capacity(gpus, 64),
                   shared=SharedGpus(dict.fromkeys(range(gpus), H100), dict(taken or {})))


def test_three_jobs_of_20_gib_share_one_h100_and_a_fourth_waits_with_the_room_left():
    decided = plan([job(i, ask(20)) for i in (1, 2, 3, 4)], cluster(1), Limits())
    assert [(d.job_id, d.gpu_ids) for d in decided.starts] == [(1, (0,)), (2, (0,)), (3, (0,))]
    # 79.65 - 3 × 20 = 19.65 GiB left, 20 asked
    assert decided.waiting == {4: "resources: waits for 20.00 GiB free on a GPU (most room now: GPU 0 19.65 GiB)"}


def test_on_eight_gpus_the_fourth_goes_to_the_next_gpu_and_the_other_six_stay_whole():
    decided = plan([job(i, ask(20)) for i in (1, 2, 3, 4)], cluster(8), Limits())
    assert [d.gpu_ids for d in decided.starts] == [(0,), (0,), (0,), (1,)]
    whole = plan([job(5, None, gpus=6)], cluster(8, taken={0: 60 * GIB, 1: 20 * GIB}), Limits())
    assert whole.starts[0].gpu_ids == (2, 3, 4, 5, 6, 7)


def test_best_fit_puts_a_job_on_the_shared_gpu_with_the_least_room_that_holds_it():
    taken = {0: H100 - 30 * GIB, 1: H100 - 10 * GIB}  # rooms: GPU 0 30 GiB, GPU 1 10 GiB, GPU 2 idle
    decided = plan([job(1, ask(8)), job(2, ask(15), user="bo")], cluster(3, taken), Limits())
    assert {d.job_id: d.gpu_ids for d in decided.starts} == {1: (1,), 2: (0,)}
    big = plan([job(3, ask(40))], cluster(3, taken), Limits())  # no shared GPU holds 40: the idle one
    assert big.starts[0].gpu_ids == (2,)


def test_a_whole_gpu_job_never_lands_on_a_shared_gpu_and_says_what_it_waits_for():
    decided = plan([job(1, ask(10)), job(2, None, user="bo"), job(3, None, user="cy")], cluster(2), Limits())
    assert {d.job_id: d.gpu_ids for d in decided.starts} == {1: (0,), 2: (1,)}
    assert decided.waiting == {3: "resources: waits for 1 GPU (0 free)"}


def test_a_sharing_job_of_two_gpus_needs_its_bytes_on_each():
    decided = plan([job(1, ask(50), gpus=2)], cluster(3, taken={0: 40 * GIB}), Limits())
    assert decided.starts[0].gpu_ids == (1, 2)  # GPU 0 has 39.65 GiB of room, not 50
    waits = plan([job(1, ask(50), gpus=2)], cluster(2, taken={0: 40 * GIB}), Limits())
    assert waits.waiting[1] == ("resources: waits for 50.00 GiB free on 2 GPUs "
                                "(most room now: GPU 1 79.65 GiB, GPU 0 39.65 GiB)")


def test_a_job_larger_than_any_gpu_is_bigger_than_the_node_with_the_figures():
    huge = MemoryAsk(30 * GIB, 58 * GIB, 2 * GIB)
    decided = plan([job(1, huge), job(2, ask(10))], cluster(2), Limits())
    assert decided.waiting[1] == ("bigger than the node: asks for 90.00 GiB a GPU (weight pool 30.00 GiB, "
                                  "activation pool 58.00 GiB, outside the pools 2.00 GiB) on one GPU; the largest "
                                  "GPU has 79.65 GiB; it waits in case the node grows back")
    assert [d.job_id for d in decided.starts] == [2]  # it holds nobody back
    assert SharedGpus({0: H100}).never_fits(1, ask(79)) is None
    small = MemoryAsk(GIB // 2, GIB // 4, GIB // 4)
    assert SharedGpus({0: None}).never_fits(1, small) == ("asks for 1.00 GiB a GPU (weight pool 0.50 GiB, activation "
                                                          "pool 0.25 GiB, outside the pools 0.25 GiB) on one GPU; no "
                                                          "GPU of the node has a known memory size")


def test_jobs_that_share_a_base_count_it_once_per_gpu():
    # each LoRA job: 4 GiB weights + 8 GiB activations + 2 GiB outside the pools, and a 6 GiB base
    lora = MemoryAsk(4 * GIB, 8 * GIB, 2 * GIB, base=6 * GIB, base_key="user:ana|b1")
    bobs = MemoryAsk(4 * GIB, 8 * GIB, 2 * GIB, base=6 * GIB, base_key="user:bob|b1")  # another user: his own copy
    # on 79.65 GiB: sharing, 20 + 4 × 14 = 76 GiB holds five jobs (a sixth: 90); each with its own base,
    # 20 GiB each, three (a fourth: 80)
    assert [d.job_id for d in plan([job(i, lora) for i in range(1, 7)], cluster(1), Limits()).starts] == [1, 2, 3, 4, 5]
    alone = MemoryAsk(4 * GIB, 8 * GIB, 2 * GIB, base=6 * GIB)  # no key: nothing to share
    assert [d.job_id for d in plan([job(i, alone) for i in range(1, 7)], cluster(1), Limits()).starts] == [1, 2, 3]
    shared = SharedGpus({0: H100})
    for _ in range(5):
        shared.take([0], lora)
    assert shared.taken[0] == 76 * GIB and shared.bases[0] == {"user:ana|b1"}
    assert (shared.need(0, lora), shared.need(0, bobs)) == (14 * GIB, 20 * GIB)
    assert lora.describe() == ("20.00 GiB a GPU (weight pool 4.00 GiB, activation pool 8.00 GiB, outside the "
                               "pools 2.00 GiB, shared base 6.00 GiB once per GPU)")
