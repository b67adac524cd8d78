"""A job's policy on a shared base, as a job process builds it: run as a script with
``DVLA_SHARED_BASE`` set, it maps the holder's base, builds the job's policy and saves the gradients
of its trainable parameters on data of its own seed (``tests/test_share_base.py``).

``python tests/share_base_probe.py SPEC.toml SEED OUT.pt [--write-base]``: ``--write-base`` then
writes into the base in place, as a buggy job might, and checks the base as a checkpoint does.
"""

from __future__ import annotations

import sys
import time

import torch

from dvla.spec import JobSpec, load_spec
from dvlad.envs import make_env
from dvlad.policies import Policy, build_policy
from dvlad.policies.base import ObsBatch
from dvlad.sharing import base as shared

BATCH, STEPS = 4, 5


def job_policy(spec: JobSpec) -> tuple[Policy, torch.Tensor]:
    """The job's policy as its learner builds it: fp32 on its device (a GPU for ``resources.gpus``)."""
    torch.set_num_threads(1)
    device = "cuda" if spec.resources.gpus else "cpu"
    return build_policy(spec, make_env(spec.env.name, **spec.env.args).spec, device)


def adapter_grads(policy: Policy, spec: JobSpec, seed: int, pause_s: float = 0.0) -> dict[str, torch.Tensor]:
    """The trainable parameters' gradients summed over ``STEPS`` minibatches of data from ``seed``
    (``pause_s`` between them, so that two jobs' steps interleave)."""
    env = make_env(spec.env.name, **spec.env.args).spec
    g = torch.Generator().manual_seed(seed)
    device = next(policy.parameters()).device
    policy.zero_grad()
    for _ in range(STEPS):
        obs = ObsBatch(images={c: torch.randint(0, 256, (BATCH, h, w, 3), dtype=torch.uint8, generator=g)
                               for c, (h, w) in env.cameras.items()},
                       proprio=torch.randn(BATCH, env.proprio_dim, generator=g),
                       instruction=policy.tokenize([f"task {seed}"] * BATCH)).to(device)
        tokens = torch.randint(0, policy.bins, (BATCH, policy.action_chunk, 7), generator=g).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = policy.evaluate(obs, tokens)
        (-out.logprob.sum() + out.value.square().sum()).backward()
        time.sleep(pause_s)
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad and p.grad is not None}


def main() -> None:
    spec, seed, out = load_spec(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    policy, flat = job_policy(spec)
    base = shared.from_environment()
    assert base is not None, "DVLA_SHARED_BASE is not set"
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    assert frozen and all(base.holds(p) for n, p in policy.named_parameters() if n in frozen)
    grads = adapter_grads(policy, spec, seed, pause_s=0.05)
    assert all(p.grad is None for n, p in policy.named_parameters() if n in frozen)
    torch.save({"grads": grads, "flat": flat.clone(), "sha256": base.sha256}, out)
    if "--write-base" in sys.argv:
        next(p for n, p in policy.named_parameters() if n in frozen).data.add_(1.0)
        base.verify()  # as the learner does before each checkpoint: raises BaseChanged


if __name__ == "__main__":
    main()
