"""The memory estimator (dvlad/gpu/memory_estimate.py) against the model itself and against the
calibration table measured on the H200 (dvlad/gpu/memory_calibration.json)."""

from __future__ import annotations

import json

import pytest

from dvla.spec import spec_from_dict
from dvlad.envs import make_env
from dvlad.gpu import memory_estimate as me
from dvlad.policies import make_policy

ROWS = json.loads(me.CALIBRATION.read_text())["rows"]


def calibrated_job(row: dict, minibatch: int = 64) -> dict:
    """The job spec of a calibration row: scripts/_vram_workload.py's synthetic env and policy."""
    args = {"preset": row["preset"], "patch_size": 16 if row["tokens"] == 153 else 8}
    return {"policy": {"name": "transformer-vla", "args": {**args, **({"lora": {"r": 16}} if row["lora"] else {})}},
            "env": {"name": "synthetic", "num_envs": minibatch, "groups": 2, "workers": 2},
            "algo": {"minibatches": 1}, "pipeline": {"segment_steps": 1}}


SYNTHETIC = {"name": "synthetic", "args": {"image_size": 64, "cameras": ["a", "b"], "proprio_dim": 6}}


@pytest.mark.parametrize("lora", [None, {"r": 4, "target_modules": ["q_proj", "down_proj"]}])
@pytest.mark.parametrize("env", [SYNTHETIC, {"name": "reach"}])
def test_parameter_counts_and_tokens_are_the_built_policys(env, lora):
    args = {"preset": "tiny", "patch_size": 16, **({"lora": lora} if lora else {})}
    spec = spec_from_dict({"policy": {"name": "transformer-vla", "action_chunk": 2, "args": args}, "env": env})
    policy = make_policy("transformer-vla", make_env(env["name"], **env.get("args", {})).spec, 2, **args)
    shape = me.model_shape(spec)
    assert shape.params == sum(p.numel() for p in policy.parameters())
    assert shape.trainable == sum(p.numel() for p in policy.parameters() if p.requires_grad)
    cameras = 2 if env["name"] == "synthetic" else 1
    patches = cameras * 4 * 4 if env["name"] == "synthetic" else 4 * 4  # 64² images in 16-pixel patches
    assert shape.tokens == patches + 1 + 16 + 2 * 7 + 1  # patches, proprio, instruction, queries, value


@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "learner" and r["batch"] == 64],
                         ids=lambda r: f"{r['preset']}-{'lora' if r['lora'] else 'full'}-{r['tokens']}")
def test_the_weight_pool_is_exact_and_the_peaks_at_or_above_what_the_h200_measured(row):
    shape = me.model_shape(spec_from_dict(calibrated_job(row)))
    assert (shape.params, shape.trainable, shape.tokens) == (row["params"], row["trainable"], row["tokens"])
    assert abs(me.weight_bytes(shape) - row["weight_bytes"]) / row["weight_bytes"] < 0.001  # buffers, Adam's step
    k = me.calibration()
    for measured in (r for r in ROWS if {**r, "batch": 0, "peak": 0, "kind": 0} == {**row, "batch": 0, "peak": 0,
                                                                                  "kind": 0}):
        predicted = (me.learner_peak(shape, row["lora"], measured["batch"], k) if measured["kind"] == "learner"
                     else me.actor_peak(shape, row["lora"], measured["batch"], k))
        # conservative (admission must not overcommit) and within 2.5x on every calibrated size,
        # 1.3x on the large batches that matter for packing
        assert measured["peak"] <= predicted <= 2.5 * measured["peak"], (measured, predicted)
        if measured["batch"] >= 64:
            assert predicted <= 1.3 * measured["peak"], (measured, predicted)


def test_a_1b_lora_job_is_estimated_at_its_pools_and_other_policies_have_no_estimate():
    job = {"policy": {"name": "transformer-vla", "args": {"preset": "1b", "patch_size": 16, "lora": {"r": 16}}},
           "env": {"name": "synthetic", "num_envs": 64, "groups": 2, "workers": 16},
           "algo": {"minibatches": 8}, "pipeline": {"segment_steps": 8}}
    est = me.estimate(spec_from_dict(job))
    assert 6.1 < est.weight / 2**30 < 6.3  # dvla top showed 6.1 GiB for this job through the daemon
    assert est.other == 2 * me.PROCESS_OVERHEAD
    assert me.estimate(spec_from_dict({"env": {"name": "synthetic"}})) is None  # tiny-vla
    assert me.estimate(spec_from_dict({**job, "env": {"name": "my.envs:make"}})) is None


def test_a_job_on_a_shared_base_asks_for_its_base_apart_and_holds_no_copy_of_it():
    job = {"policy": {"name": "transformer-vla", "args": {"preset": "1b", "lora": {"r": 16}}},
           "env": {"name": "synthetic", "num_envs": 16, "groups": 2, "workers": 2}}
    own = me.estimate(spec_from_dict(job))
    sharing = me.estimate(spec_from_dict({**job, "resources": {"share_base": True}}))
    shape = me.model_shape(spec_from_dict(job))
    assert shape.base > 0.9 * shape.params  # a LoRA job's parameters are nearly all its trunk's
    assert sharing.base == 2 * shape.base and own.base == 0  # one bf16 copy, counted once per GPU
    assert own.weight - sharing.weight == 4 * shape.base + 2 * shape.base  # no fp32 master, no bf16 replica
    assert own.activation - sharing.activation == 2 * shape.base  # autocast copies none of a bf16 base
    assert sharing.total < own.total
