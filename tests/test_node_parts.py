"""One job over two nodes on loopback: two node parts (``python -m dvlad.runtime.job`` with the
variables the coordinating dvlad sets, dvlad/lanes/node_part.py) started as real processes, their
learner ranks joined by Gloo over TCP. No daemon: this is the job-process side of federation."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvla import metric_names as m
from dvla.checkpoint import CHECKPOINT_NAME
from dvla.spec import dump_toml, spec_from_dict, spec_to_dict
from dvlad.lanes.node_part import NodePart, NodeState, loopback
from dvlad.lanes.ranks import weights_digest
from dvlad.policies.checkpoint import load_checkpoint
from dvlad.runtime.metrics import read_jsonl

ROLLOUT = 8 * 8
"""Env steps of one node's rollout: num_envs × segment_steps."""


@pytest.fixture
def job_file(small_spec, tmp_path):
    """A file of the reach job on ``nodes`` nodes with a budget of ``budget`` env steps over all of them."""

    def write(nodes: int, budget: int, timeout: float = 60.0) -> Path:
        spec = small_spec("async", train__total_env_steps=budget, train__max_minutes=0.0,
                          train__checkpoint_every=0, placement__nodes=nodes, placement__collective_timeout_s=timeout)
        spec.env.name, spec.env.args, spec.env.workers = "reach", {}, 1
        spec.resources.device, spec.resources.torch_threads = "cpu", 1
        path = tmp_path / f"job{nodes}.toml"
        path.write_text(dump_toml(spec_from_dict(spec_to_dict(spec))))
        return path

    return write


def start_parts(job: Path, tmp_path: Path, nodes: int) -> list[subprocess.Popen]:
    """The node parts of ``job``, one learner rank each, as a coordinator would start them."""
    procs = []
    for node, part in enumerate(loopback([1] * nodes)):
        env = {**os.environ, **part.environ()}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dvlad.runtime.job", str(job), "--output-dir", str(tmp_path / f"node{node}"),
             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True))  # its own process group: a test can kill the part with its lanes
    return procs


def summary(tmp_path: Path, node: int) -> dict:
    return json.loads((tmp_path / f"node{node}" / "summary.json").read_text())


@pytest.mark.slow
def test_two_node_parts_train_reach_as_one_job(job_file, tmp_path):
    budget = 1280
    procs = start_parts(job_file(2, budget), tmp_path, 2)
    outs = [p.communicate(timeout=420) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    first, second = summary(tmp_path, 0), summary(tmp_path, 1)
    # the budget counts both nodes' env steps: both sampled, and together they did the one-node job's work
    steps = first["node_env_steps"] + second["node_env_steps"]
    assert first["node_env_steps"] >= ROLLOUT and second["node_env_steps"] >= ROLLOUT
    assert first[m.ENV_STEPS] == second[m.ENV_STEPS] == steps
    assert budget <= steps <= budget + 2 * 2 * 2 * ROLLOUT  # at most two rollouts (staleness 1) per node past it
    assert first["stop_reason"] == second["stop_reason"] == "env_steps"
    assert first[m.VERSION] == second[m.VERSION] >= 5
    # every update trained on both nodes' rollouts: node 0's rows count the samples of both
    rows = read_jsonl(tmp_path / "node0" / "metrics.jsonl")
    assert [r[m.VERSION] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r[m.SAMPLES] == 2 * ROLLOUT for r in rows)
    # the ranks compared their weights after every update; at the end node 1's equal node 0's checkpoint
    assert first["checkpoint"] and second["checkpoint"] is None
    assert not (tmp_path / "node1" / CHECKPOINT_NAME).exists()
    tensors, meta = load_checkpoint(Path(first["checkpoint"]))
    assert int(meta["version"]) == first[m.VERSION]
    assert second["weights_digest"] == first["weights_digest"]  # summed alike on both nodes: bit for bit
    # summed here with other threads, in another order: equal to the last rounding
    assert first["weights_digest"] == pytest.approx(list(weights_digest(tensors["policy.flat"])), rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(("kill", "said"), [
    ("part", "node 1's ranks went away: "),  # every process of it, as a dead server goes: Gloo sees them go
    ("main process", "node 1 failed (its part's summary says why)"),  # its learner rank sees it go, and says so
])
def test_a_killed_node_fails_the_other_within_the_timeout_naming_it(job_file, tmp_path, kill, said):
    timeout = 60.0  # the collective time-out: long enough that a loaded 2-core machine still sees the orphan first
    procs = start_parts(job_file(2, 10**9, timeout), tmp_path, 2)
    deadline = time.monotonic() + 300
    rows = tmp_path / "node0" / "metrics.jsonl"
    while not (rows.exists() and len(rows.read_text().splitlines()) >= 3):  # a few updates together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.5)
    if kill == "part":
        os.killpg(procs[1].pid, signal.SIGKILL)
    else:
        procs[1].kill()
    killed = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=timeout + 60)
        assert procs[0].returncode == 1
        assert time.monotonic() - killed < timeout + 30
        reason = summary(tmp_path, 0)["reason"]
        assert reason.startswith(said), reason
        assert f"job failed: {reason}" in err
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what a failure left behind
            proc.communicate(timeout=30)


def test_a_part_reads_its_place_from_the_environment_and_refuses_what_does_not_add_up():
    part = NodePart(2, 1, "tcp://10.0.0.1:29500", 2, 4)
    assert NodePart.from_env(2, part.environ()) == part
    assert part.global_rank(1) == 3 and not part.leads and part.others() == "node 0's ranks"
    assert NodePart.from_env(1, {}) is None
    with pytest.raises(ValueError, match=r"placement\.nodes = 2: this process runs one node.s part"):
        NodePart.from_env(2, {})
    with pytest.raises(ValueError, match="missing DVLA_WORLD"):
        NodePart.from_env(2, {k: v for k, v in part.environ().items() if k != "DVLA_WORLD"})
    with pytest.raises(ValueError, match=r"DVLA_NODES = 2 but the job file says placement\.nodes = 3"):
        NodePart.from_env(3, part.environ())
    with pytest.raises(ValueError, match="DVLA_NODE_RANK = 2 is not a node of 0"):
        NodePart.from_env(2, {**part.environ(), "DVLA_NODE_RANK": "2"})
    with pytest.raises(ValueError, match="is not tcp://HOST:PORT"):
        NodePart.from_env(2, {**part.environ(), "DVLA_FED_RENDEZVOUS": "10.0.0.1:29500"})
    with pytest.raises(ValueError, match="DVLA_RANK_OFFSET = 'x' is not an integer"):
        NodePart.from_env(2, {**part.environ(), "DVLA_RANK_OFFSET": "x"})
    with pytest.raises(ValueError, match="past DVLA_WORLD = 4"):
        part.check(3)
    assert NodePart(3, 1, "tcp://h:1", 1, 3).others() == "the ranks of one of nodes 0, 2"
    parts = loopback([2, 1, 2])
    assert [(p.node, p.rank_offset, p.world) for p in parts] == [(0, 0, 5), (1, 2, 5), (2, 3, 5)]
    assert len({p.rendezvous for p in parts}) == 1 and parts[0].leads and not parts[1].leads


def test_node_k_samples_with_a_seed_of_its_own(small_spec):
    spec = small_spec()
    assert NodePart(2, 0, "tcp://h:1", 0, 2).own(spec) is spec
    seeds = {NodePart(3, k, "tcp://h:1", k, 3).own(spec).job.seed for k in range(3)}
    assert len(seeds) == 3


def test_a_node_state_carries_its_steps_its_stop_reason_and_its_failure():
    import multiprocessing as mp

    state = NodeState(mp.get_context("spawn"))
    assert (state.env_steps, state.stop_reason, state.failed) == (0, None, False)
    state.tell(640)
    state.tell(704, "env_steps")
    assert (state.env_steps, state.stop_reason, state.failed) == (704, "env_steps", False)
    state.tell(704, failed=True)
    assert state.failed and state.stop_reason == "env_steps"
