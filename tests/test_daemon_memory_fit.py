"""Memory-fit admission through a real dvlad replaying the recorded H100 (79.65 GiB): sharing jobs go
on one GPU together, and a job that can never fit is refused at submit with the figures."""

from __future__ import annotations

import pytest
import torch

from dvlad.testing import FIXTURE, LONG

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(torch.cuda.is_available(), reason="replays a recorded GPU on a machine without one")]

ROOMY = "[node]\ncpu_slots = 8\n"


def sharing(name: str, activation: str, weight: str = "1GiB") -> dict:
    return {**LONG, "job": {"name": name},
            "resources": {"gpus": 1, "share_gpus": True, "weight_pool": weight, "activation_pool": activation}}


@pytest.fixture
def dvlad(dvlads):
    if not FIXTURE.exists():
        pytest.skip(f"the recorded topology {FIXTURE} is not in this checkout")
    return dvlads(ROOMY, recorded_gpu=True)


def test_three_sharing_jobs_are_placed_on_the_one_gpu_at_once(dvlad):
    ids = []
    for i in range(3):  # 1 + 20 + 4 (two processes outside the pools) = 25 GiB each: three fit 79.65
        status, body = dvlad.call("POST", "/v1/jobs", {"spec": sharing(f"share{i}", "20GiB")})
        assert status == 201, body
        ids.append(body["job"]["id"])
    # the recorded GPU is not really here, so each job fails once started; the third was placed on
    # GPU 0 before the first had ended: the three held it together
    jobs = [dvlad.wait_state(i, {"failed", "succeeded"}, timeout=60) for i in ids]
    assert [j["gpu_ids"] for j in jobs] == [[0], [0], [0]]
    assert jobs[2]["started_at"] < jobs[0]["ended_at"], jobs


def test_a_sharing_job_larger_than_the_gpu_is_refused_at_submit_with_the_figures(dvlad):
    status, body = dvlad.call("POST", "/v1/jobs", {"spec": sharing("huge", "90GiB")})
    assert (status, body["code"], body["field"]) == (409, "exceeds_node", "spec.resources.activation_pool"), body
    assert body["reason"] == ("this node's GPUs cannot hold the job: it asks for 95.00 GiB a GPU (weight pool "
                              "1.00 GiB, activation pool 90.00 GiB, outside the pools 4.00 GiB) on one GPU; the "
                              "largest GPU has 79.65 GiB; lower resources.activation_pool or resources.weight_pool "
                              '(or the batch sizes behind an "auto" budget), or use a node with larger GPUs')
    status, body = dvlad.call("POST", "/v1/jobs", {"spec": sharing("guess", "auto")})  # tiny-vla: no estimate
    assert (status, body["field"]) == (409, "spec.resources.activation_pool"), body
    assert 'resources.activation_pool = "auto" needs an estimate' in body["reason"]
    assert dvlad.call("GET", "/v1/jobs?all=1")[1]["jobs"] == []
