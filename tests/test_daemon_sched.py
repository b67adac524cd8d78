"""The scheduler is a pure function: every rule checked on hand-made queues, no processes."""

from __future__ import annotations

import itertools

import pytest

from dvlad.sched import Capacity, Cluster, Decision, Limit, Limits, QueuedJob, Usage, plan, schedule
from dvlad.sched.policy import pick_gpus


def job(id, user="u", gpus=0, cpus=1, priority=0, groups=()):
    return QueuedJob(id, user, tuple(groups), priority, gpus, cpus)


def cluster(gpus=(), cpus=8, **kw):
    return Cluster(frozenset(gpus), cpus, **kw)


def ids(decisions):
    return [d.job_id for d in decisions]


def test_fifo_within_a_priority_and_gpus_in_index_order():
    out = schedule([job(2, gpus=1), job(1, gpus=1), job(3, gpus=1)], cluster(gpus=[0, 1]), Limits())
    assert out == [Decision(1, (0,)), Decision(2, (1,))]


def test_higher_priority_first_among_a_users_own_jobs():
    out = schedule([job(1, gpus=1), job(2, gpus=1, priority=5)], cluster(gpus=[0]), Limits())
    assert ids(out) == [2]


def test_priority_does_not_reach_across_users():
    # b's job came first; a's priority 1000 orders a's own jobs only
    out = schedule([job(1, "b", gpus=1), job(2, "a", gpus=1, priority=1000)], cluster(gpus=[0]), Limits())
    assert ids(out) == [1]
    queue = [job(1, "a", gpus=1), job(2, "a", gpus=1, priority=1000), job(3, "b", gpus=1)]
    assert schedule(queue, cluster(gpus=[0, 1]), Limits()) == [Decision(2, (0,)), Decision(3, (1,))]


def test_turns_go_to_the_user_holding_fewest_gpus_then_running_fewest_jobs():
    queue = [job(1, "a", gpus=1), job(2, "a", gpus=1), job(3, "a", gpus=1), job(4, "b", gpus=1), job(5, "b", gpus=1)]
    assert ids(schedule(queue, cluster(gpus=range(4)), Limits())) == [1, 4, 2, 5]  # not a's three first
    holding = cluster(gpus=[7], user_usage={"a": Usage(gpus=2, running_jobs=1), "b": Usage(gpus=1, running_jobs=3)})
    assert ids(schedule(queue, holding, Limits())) == [4]
    cpu_only = cluster(user_usage={"a": Usage(running_jobs=2), "b": Usage(running_jobs=1)}, cpus=1)
    assert ids(schedule([job(1, "a"), job(2, "b")], cpu_only, Limits())) == [2]


def test_backfill_inside_a_priority():
    # job 1 needs 2 GPUs, only 1 free: job 2 (same priority, 1 GPU) starts in the room left
    out = schedule([job(1, gpus=2), job(2, gpus=1)], cluster(gpus=[3]), Limits())
    assert out == [Decision(2, (3,))]


def test_no_backfill_from_a_lower_priority():
    out = schedule([job(1, gpus=2, priority=1), job(2, gpus=1, priority=0)], cluster(gpus=[0]), Limits())
    assert out == []


def test_a_big_job_holds_back_only_its_own_users_lower_priorities():
    queue = [job(1, "a", gpus=2, priority=5), job(2, "a", gpus=1), job(3, "b", gpus=1), job(4, "a", gpus=1, priority=5)]
    assert ids(schedule(queue, cluster(gpus=[0]), Limits())) == [3]  # a's 2 waits behind a's 1, b's 3 does not
    assert ids(schedule(queue, cluster(gpus=[0, 1]), Limits())) == [1]  # 1 holds both: b's turn comes to nothing


def test_a_job_bigger_than_the_whole_node_holds_nobody_back():
    # job 1 (from before the node shrank) asks for 3 GPUs of a 2-GPU node: lower priorities still start
    queue = [job(1, gpus=3, priority=5), job(2, gpus=1), job(3, cpus=9, priority=5), job(4, cpus=2)]
    node = Capacity(gpus=2, cpus=8)
    assert ids(schedule(queue, cluster(gpus=[0, 1], capacity=node), Limits())) == [2, 4]
    assert schedule(queue, cluster(gpus=[0, 1]), Limits()) == []  # capacity unknown: job 1 may fit, it blocks
    assert node.holds(2, 8) and not node.holds(3, 1) and not node.holds(0, 9)


def test_cpu_only_jobs_use_cpu_slots():
    out = schedule([job(1, cpus=3), job(2, cpus=3), job(3, cpus=2)], cluster(cpus=5), Limits())
    assert ids(out) == [1, 3]


def test_zero_cpu_slots_keeps_everything_queued():
    assert schedule([job(1), job(2)], cluster(cpus=0), Limits()) == []


def test_user_running_job_limit_counts_what_runs_already():
    limits = Limits(users={"a": Limit(running_jobs=2)})
    state = cluster(user_usage={"a": Usage(running_jobs=1)})
    out = schedule([job(1, "a"), job(2, "a"), job(3, "b")], state, limits)
    assert ids(out) == [3, 1]  # b, running nothing, has the first turn


def test_a_user_who_reaches_their_running_job_limit_in_a_pass_has_every_other_job_wait_for_it():
    limits = Limits(users={"a": Limit(running_jobs=1)})
    queue = [job(1, "a"), job(2, "a", priority=1), job(3, "a", gpus=1), job(4, "b")]
    out = plan(queue, cluster(gpus=[0], cpus=8), limits)
    assert ids(out.starts) == [2, 4]
    assert out.waiting == dict.fromkeys([1, 3], "user limit: a runs 1 job of at most 1 (limits.users.a.running_jobs)")


def test_user_gpu_limit_does_not_block_others():
    limits = Limits(default_user=Limit(gpus=1))
    out = schedule([job(1, "a", gpus=2), job(2, "b", gpus=1), job(3, "a", gpus=1)], cluster(gpus=[0, 1, 2]), limits)
    assert out == [Decision(2, (0,)), Decision(3, (1,))]


def test_group_limit_is_shared_by_members():
    limits = Limits(groups={"students": Limit(gpus=2)})
    queue = [job(1, "a", gpus=1, groups=["students"]), job(2, "b", gpus=1, groups=["students"]),
             job(3, "c", gpus=1, groups=["students"]), job(4, "d", gpus=1, groups=["staff"])]
    out = schedule(queue, cluster(gpus=range(8)), limits)
    assert ids(out) == [1, 2, 4]


def test_limits_of_zero_block_everything():
    out = schedule([job(1), job(2)], cluster(), Limits(default_user=Limit(running_jobs=0)))
    assert out == []


def test_input_cluster_not_modified():
    state = cluster(gpus=[0, 1], user_usage={"u": Usage(1, 1)})
    schedule([job(1, gpus=2)], state, Limits())
    assert state.free_gpus == frozenset({0, 1}) and state.user_usage["u"] == Usage(1, 1)


def test_best_linked_gpus_preferred():
    nvlinked = {frozenset({1, 3}), frozenset({0, 2})}
    score = lambda a, b: 10.0 if frozenset({a, b}) in nvlinked else 1.0  # noqa: E731
    assert pick_gpus([0, 1, 3], 2, score) == (1, 3)
    assert pick_gpus([0, 1, 2, 3], 2, score) == (0, 2)  # ties: lowest indices
    assert pick_gpus([0, 1], 3, score) is None
    out = schedule([job(1, gpus=2)], cluster(gpus=[0, 1, 3], link_score=score), Limits())
    assert out == [Decision(1, (1, 3))]


@pytest.mark.parametrize("n_gpus,cpus", list(itertools.product([0, 1, 2, 4], [0, 2, 5])))
def test_decisions_never_oversubscribe(n_gpus, cpus):
    queue = [job(i, f"u{i % 3}", gpus=i % 3, cpus=1 + i % 2, priority=i % 2) for i in range(1, 13)]
    limits = Limits(default_user=Limit(gpus=2, running_jobs=2))
    out = schedule(queue, cluster(gpus=range(n_gpus), cpus=cpus), limits)
    used = [g for d in out for g in d.gpu_ids]
    assert len(used) == len(set(used)) and set(used) <= set(range(n_gpus))
    by_id = {j.id: j for j in queue}
    assert sum(by_id[d.job_id].cpus for d in out) <= cpus
    for user in {j.user for j in queue}:
        mine = [by_id[d.job_id] for d in out if by_id[d.job_id].user == user]
        assert len(mine) <= 2 and sum(j.gpus for j in mine) <= 2
    assert all(len(d.gpu_ids) == by_id[d.job_id].gpus for d in out)


def test_every_job_left_queued_says_why_resources_priority_limits_or_size():
    """The pending reasons squeue would show, produced by the same pass that decides (plan)."""
    limits = Limits(users={"carol": Limit(running_jobs=1)}, default_user=Limit(gpus=1),
                    groups={"students": Limit(running_jobs=0)})
    queue = [job(1, "ann", gpus=1, cpus=2, priority=5), job(2, "ann", cpus=1), job(3, "ann", cpus=1, priority=5),
             job(4, "bob", gpus=2), job(5, "carol", cpus=1), job(6, "dan", groups=["students"]),
             job(7, "eve", cpus=9)]
    state = cluster(gpus=[], cpus=2, user_usage={"carol": Usage(running_jobs=1)}, capacity=Capacity(gpus=1, cpus=8))
    out = plan(queue, state, limits)
    assert ids(out.starts) == [3]  # ann's priority-5 job that fits the room left (backfill)
    assert out.waiting == {
        1: "resources: waits for 1 GPU (0 free)",
        2: "priority: behind job 1 of ann (priority 5), which waits for 1 GPU (0 free)",
        4: "user limit: bob holds 0 GPUs and the job asks for 2 more, at most 1 (limits.default.gpus)",
        5: "user limit: carol runs 1 job of at most 1 (limits.users.carol.running_jobs)",
        6: "group limit: group students runs 0 jobs of at most 0 (limits.groups.students.running_jobs)",
        7: "bigger than the node: asks for 0 GPUs and 9 CPU slots, the node has 1 GPU and 8 CPU slots; "
           "it waits in case the node grows back",
    }
    short_of_both = plan([job(1, gpus=2, cpus=3)], cluster(gpus=[0], cpus=1), Limits())
    assert short_of_both.waiting == {1: "resources: waits for 2 GPUs (1 free) and 3 CPU slots (1 free)"}
    assert set(out.waiting) | {d.job_id for d in out.starts} == {j.id for j in queue}  # each job: started or why


@pytest.mark.parametrize("n_gpus,cpus", list(itertools.product([0, 1, 2], [0, 3])))
def test_every_queued_job_either_starts_or_has_a_reason(n_gpus, cpus):
    queue = [job(i, f"u{i % 3}", gpus=i % 3, cpus=1 + i % 2, priority=i % 2, groups=[f"g{i % 2}"])
             for i in range(1, 13)]
    limits = Limits(default_user=Limit(gpus=2, running_jobs=2), groups={"g1": Limit(running_jobs=1)})
    out = plan(queue, cluster(gpus=range(n_gpus), cpus=cpus, capacity=Capacity(n_gpus, cpus)), limits)
    started = {d.job_id for d in out.starts}
    assert started.isdisjoint(out.waiting) and started | set(out.waiting) == {j.id for j in queue}
    assert all(r.split(": ")[0] in {"resources", "priority", "user limit", "group limit", "bigger than the node"}
               for r in out.waiting.values())
    assert out.starts == schedule(queue, cluster(gpus=range(n_gpus), cpus=cpus, capacity=Capacity(n_gpus, cpus)),
                                  limits)
