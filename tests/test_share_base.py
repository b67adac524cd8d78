"""One base model for many LoRA jobs (dvlad/sharing/): a real holder process builds the base once,
job processes map it, and what they compute is what each computes alone on its own copy.

On the CPU the base is a /dev/shm segment; on a GPU the same code shares it over CUDA IPC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvla.spec import dump_toml, spec_from_dict
from dvlad.segments import count, standalone_prefix
from dvlad.sharing import base as shared
from dvlad.sharing.base import MANIFEST, MANIFEST_ENV, BaseChanged
from dvlad.sharing.holder import build_base
from dvlad.sharing.holders import base_key, sharing_domain

HERE = Path(__file__).resolve().parent
PROBE = HERE / "share_base_probe.py"
sys.path.insert(0, str(HERE))
from share_base_probe import adapter_grads, job_policy  # noqa: E402

LORA_JOB = {"job": {"name": "lora", "seed": 3},
            "policy": {"name": "transformer-vla", "args": {"preset": "tiny", "patch_size": 8,
                                                           "trunk": {"num_hidden_layers": 2}, "lora": {"r": 4}}},
            "env": {"name": "synthetic", "num_envs": 4, "groups": 2, "workers": 1,
                    "args": {"image_size": 16, "cameras": ["image"]}},
            "resources": {"share_base": True}}


GPU_JOB = {**LORA_JOB, "resources": {"share_base": True, "gpus": 1}}


@pytest.fixture
def holder(tmp_path, request):
    """A real holder process of LORA_JOB's base on the CPU (or, parametrized ``"cuda"``, the GPU);
    yields its manifest's path and its segments' prefix."""
    device = getattr(request, "param", "cpu")
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(dump_toml(spec_from_dict(LORA_JOB if device == "cpu" else GPU_JOB)))
    prefix = standalone_prefix() + "base-"
    proc = subprocess.Popen([sys.executable, "-m", "dvlad.sharing.holder", str(spec_file), "--device", device,
                             "--dir", str(tmp_path), "--prefix", prefix])
    try:
        shared.wait_for_manifest(tmp_path / MANIFEST, timeout=120)
        yield tmp_path / MANIFEST, prefix
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert count(prefix).count == 0  # the holder removed its segment


def probe(spec_file: Path, manifest: Path, seed: int, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROBE), str(spec_file), str(seed), str(out), *extra],
                            env={**os.environ, MANIFEST_ENV: str(manifest)}, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_jobs_on_one_shared_base_get_the_gradients_each_gets_alone_on_its_own_copy(holder, tmp_path):
    manifest, prefix = holder
    segment = count(prefix)
    assert segment.count == 1 and segment.bytes > 0  # one copy: fp32 on the CPU, one segment
    spec_file = tmp_path / "job.toml"
    spec_file.write_text(dump_toml(spec_from_dict(LORA_JOB)))
    jobs = [probe(spec_file, manifest, seed, tmp_path / f"{seed}.pt") for seed in (1, 2)]  # at once, interleaved
    for job in jobs:
        assert job.wait(120) == 0, job.stderr.read()
    assert count(prefix) == segment  # neither made a copy of its own
    mapped = shared.attach(shared.wait_for_manifest(manifest)).tensors
    own = build_base(spec_from_dict(LORA_JOB), torch.device("cpu"))
    assert mapped.keys() == shared.base_tensors(own).keys()
    assert all(torch.equal(mapped[n], t) for n, t in shared.base_tensors(own).items())  # the base a job builds alone
    alone = spec_from_dict({**LORA_JOB, "resources": {"share_base": False}})
    for seed in (1, 2):
        got = torch.load(tmp_path / f"{seed}.pt")
        policy, flat = job_policy(alone)  # its own private base, built as a job without sharing builds it
        flat.copy_(got["flat"])  # the job's own adapters, vision and heads
        mine = adapter_grads(policy, alone, seed)
        assert mine.keys() == got["grads"].keys()
        for name, grad in mine.items():
            assert torch.equal(grad, got["grads"][name]), name  # bit for bit: nothing of the other job mixed in
    other = torch.load(tmp_path / "2.pt")["grads"]
    assert any(not torch.equal(g, other[n]) for n, g in torch.load(tmp_path / "1.pt")["grads"].items())


@pytest.mark.slow
def test_a_job_that_writes_into_the_shared_base_is_caught_by_the_hash_check(holder, tmp_path):
    manifest, _ = holder
    spec_file = tmp_path / "job.toml"
    spec_file.write_text(dump_toml(spec_from_dict(LORA_JOB)))
    job = probe(spec_file, manifest, 1, tmp_path / "1.pt", "--write-base")
    assert job.wait(120) != 0
    assert "BaseChanged: the shared base weights changed: SHA-256" in job.stderr.read()
    with pytest.raises(BaseChanged, match="a job must never write the shared base"):
        shared.attach(shared.wait_for_manifest(manifest))  # the next job to map it refuses it too


@pytest.mark.slow
def test_the_learner_checks_the_shared_base_before_each_checkpoint(holder, tmp_path, monkeypatch):
    from dvlad.envs import make_env
    from dvlad.lanes.learner import Learner, LearnerConfig

    manifest, _ = holder
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))
    spec = spec_from_dict(LORA_JOB)
    learner = Learner(LearnerConfig(spec, make_env(spec.env.name, **spec.env.args).spec, str(tmp_path / "run")))
    assert learner.base is not None and learner.save().exists()  # untouched: checkpointed
    frozen = next(p for n, p in learner.policy.named_parameters() if not p.requires_grad)
    assert learner.base.holds(frozen) and all(frozen is not p for g in learner.optimizer.param_groups
                                              for p in g["params"])  # the base is never optimised
    frozen.data.mul_(1.5)  # a job writing into the base in place
    with pytest.raises(BaseChanged, match="a job must never write the shared base"):
        learner.save(tmp_path / "next.safetensors")
    assert not (tmp_path / "next.safetensors").exists()  # refused before writing


def test_jobs_share_a_base_only_within_a_user_unless_a_group_is_allowed():
    assert sharing_domain("ann", ["lab"], "") == "user:ann"
    assert sharing_domain("bob", ["lab"], "") == "user:bob"  # off by default: ann's and bob's do not share
    assert sharing_domain("ann", ["lab"], "lab") == sharing_domain("bob", ["lab", "x"], "lab") == "group:lab"
    assert sharing_domain("eve", ["other"], "lab") == "user:eve"  # not a member: her own


def test_the_base_key_is_its_content_not_its_job():
    spec = spec_from_dict(LORA_JOB)
    same = spec_from_dict({**LORA_JOB, "job": {"name": "other", "seed": 3},
                           "env": {**LORA_JOB["env"], "num_envs": 8}, "algo": {"minibatches": 2}})
    reseeded = spec_from_dict({**LORA_JOB, "job": {"name": "lora", "seed": 4}})
    bigger = spec_from_dict({**LORA_JOB, "policy": {**LORA_JOB["policy"], "args": {
        **LORA_JOB["policy"]["args"], "trunk": {"num_hidden_layers": 3}}}})
    assert base_key(spec) == base_key(same)  # another job, batch or name: the same base bytes
    assert base_key(spec) != base_key(reseeded) and base_key(spec) != base_key(bigger)


@pytest.mark.slow
@pytest.mark.parametrize("share_group", ["", "lab"])
def test_another_users_job_gets_a_copy_of_its_own_unless_their_group_may_share(tmp_path, share_group):
    from types import SimpleNamespace

    from dvlad.sharing.holders import BaseHolders

    owner = f"t{os.getpid()}{len(share_group)}"
    holders = BaseHolders(tmp_path, owner, share_group)
    spec = spec_from_dict(LORA_JOB)
    ann, bob = (SimpleNamespace(id=i, user=u, groups=["lab"], uid=0, gid=0) for i, u in ((1, "ann"), (2, "bob")))
    try:
        manifests = {holders.acquire(job, spec, []) for job in (ann, bob)}  # the same base, on the CPU
        for path in manifests:
            shared.wait_for_manifest(path, timeout=120)
        assert len(manifests) == len(holders.holders) == (1 if share_group else 2)
        assert count(f"dvla-{owner}-base").count == len(manifests)  # a segment per holder
        holders.release(1)
        assert len(holders.holders) == 1  # shared: kept for bob; apart: ann's ended, bob's stays
    finally:
        holders.stop_all()
    assert count(f"dvla-{owner}-base").count == 0



@pytest.mark.slow
def test_a_restarted_dvlads_holders_adopt_the_live_ones_its_jobs_map_end_the_rest_and_forget_the_dead(tmp_path):
    from types import SimpleNamespace

    from dvlad.runtime.launch import process_start
    from dvlad.segments import SHM_DIR
    from dvlad.sharing.holders import BaseHolders

    owner = f"t{os.getpid()}r"
    before = BaseHolders(tmp_path, owner)
    spec = spec_from_dict(LORA_JOB)
    ann, bob = (SimpleNamespace(id=i, user=u, groups=[], uid=0, gid=0) for i, u in ((1, "ann"), (2, "bob")))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = before.records.root / "0123456789ab.json"
    after = BaseHolders(tmp_path, owner)  # the next dvlad on the same state directory
    try:
        for job in (ann, bob):  # apart (two users): a holder each
            shared.wait_for_manifest(before.acquire(job, spec, []), timeout=120)
        pids = {h.key: h.pid for h in before.holders.values()}
        kept = before.of_job[2]
        before.records.save(dead.stem, {"key": "user:cy|cpu|0", "pid": gone.pid, "start": 1.0, "jobs": [2],
                                        "prefix": f"dvla-{owner}-base0123456789ab-"})
        (SHM_DIR / f"dvla-{owner}-base0123456789ab-float32").write_bytes(b"x")
        after.recover(active={2})  # ann's job ended while dvlad was down, bob's runs on
        assert {k: h.pid for k, h in after.holders.items()} == {kept: pids[kept]}  # bob's, the very process
        assert after.of_job == {2: kept}
        assert not any(process_start(pid) for key, pid in pids.items() if key != kept)  # ann's ended
        assert count(f"dvla-{owner}-base").count == 1 and not dead.exists()  # and the dead one's segment went
        after.release(2)  # the adopted holder is not after's child: it still ends after its last job
        assert process_start(pids[kept]) is None and count(f"dvla-{owner}-base").count == 0
        assert list(after.records.root.iterdir()) == []
    finally:
        before.stop_all()
        after.stop_all()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the base over CUDA IPC")
@pytest.mark.parametrize("holder", ["cuda"], indirect=True)
def test_on_a_gpu_two_jobs_map_the_base_over_cuda_ipc_and_a_write_is_caught(holder, tmp_path):
    manifest, prefix = holder
    assert count(prefix).count == 0  # on a GPU the base is CUDA memory, not a segment
    assert shared.wait_for_manifest(manifest)["device"].startswith("cuda")
    spec_file = tmp_path / "job.toml"
    spec_file.write_text(dump_toml(spec_from_dict(GPU_JOB)))
    jobs = [probe(spec_file, manifest, seed, tmp_path / f"{seed}.pt") for seed in (1, 2)]
    for job in jobs:
        assert job.wait(300) == 0, job.stderr.read()
    first, second = (torch.load(tmp_path / f"{s}.pt") for s in (1, 2))
    assert all(torch.isfinite(g).all() for g in first["grads"].values())
    assert any(not torch.equal(g, second["grads"][n]) for n, g in first["grads"].items())
    writer = probe(spec_file, manifest, 3, tmp_path / "3.pt", "--write-base")
    assert writer.wait(300) != 0 and "BaseChanged" in writer.stderr.read()
