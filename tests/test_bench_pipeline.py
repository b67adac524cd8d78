"""scripts/bench_pipeline.py's arithmetic and settings: the ideals count rendering's GPU time.

The lane costs are those measured alone on the H200 with real libero_spatial (16 EGL workers,
64 envs, the 1B transformer-vla; docs/benchmarks.md), in ms per env step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from _pinning import split_cores
from bench_pipeline import actor_cores_of, ideals, variant_settings

from dvla.spec import load_spec
from dvlad.lanes.device import Placement

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
H200_LIBERO_MS = {"sample": 4.008, "render": 2.986, "infer": 0.722, "learn": 3.791, "publish": 0.004}


def test_rendering_shares_the_gpu_with_inference_and_learning():
    spec = load_spec(EXAMPLES / "gpu_bench_libero.toml")
    costs = {k: v / 1e3 for k, v in H200_LIBERO_MS.items()}
    gpu = Placement(torch.device("cuda", 0), torch.bfloat16)
    sync, busiest = ideals(costs, spec, gpu, 16)
    assert sync == pytest.approx(8.525e-3)  # sampling (its rendering inside) + infer + learn + publish
    assert busiest == pytest.approx(7.503e-3)  # the GPU: render + infer + learn + publish, not sampling's 4.0
    assert sync / busiest == pytest.approx(1.136, abs=1e-3)
    without_render = ideals({**costs, "render": 0.0}, spec, gpu, 16)[1]
    assert without_render == pytest.approx(4.517e-3)  # the old ideal: 1.89x, out of reach


def test_variants_set_env_args_and_restore_them_and_carry_the_pinning():
    spec = load_spec(EXAMPLES / "gpu_bench_libero.toml")
    before = dict(spec.env.args)
    with variant_settings(spec, "env.workers=8,actor_cores=4,env.args.fast_render=true,env.args.suite=libero_10"):
        assert spec.env.workers == 8
        assert spec.env.args["fast_render"] is True and spec.env.args["suite"] == "libero_10"
    assert spec.env.workers == 16 and spec.env.args == before
    assert actor_cores_of("env.workers=8,actor_cores=4") == 4 and actor_cores_of("env.workers=8") == 0
    with pytest.raises(ValueError, match=r"SECTION\.KEY"), variant_settings(spec, "nonsense=1"):
        pass


def test_split_cores_gives_the_lanes_the_first_cores_and_refuses_all_or_none():
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    lanes, workers = split_cores(1)
    assert lanes == {cores[0]} and workers == set(cores[1:])
    for bad in (0, len(cores)):
        with pytest.raises(ValueError, match="actor_cores must be in"):
            split_cores(bad)


def test_sample_only_measures_the_job_and_each_variant_with_its_own_env_settings():
    """``--sample-only``: one pool per setting, each opened with its variant's settings, the spec
    left as it was after."""
    from bench_pipeline import sample_costs

    spec = load_spec(EXAMPLES / "reach_ppo.toml")
    spec.env.num_envs, spec.env.workers, spec.env.groups = 8, 2, 2
    rows = sample_costs(spec, Placement(torch.device("cpu"), torch.float32), ["env.workers=1"], 0.3)
    assert list(rows) == ["job", "env.workers=1"]
    for row in rows.values():
        assert row["sample_ms"] > 0 and row["render_ms"] == 0.0  # nothing draws on a GPU here
        assert row["steps_per_s"] == pytest.approx(1e3 / row["sample_ms"])
    assert spec.env.workers == 2
