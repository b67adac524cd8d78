"""The dual VRAM pool against the default caching allocator, on one mixed RL workload, in one run.

The workload is a transformer-vla job's memory traffic (scripts/_vram_workload.py): rollouts of a
varying number of envs and steps acted by the actor replica and held until the update, learner
updates over minibatches whose size follows the rollout, and a weight publication each iteration.
The same seeded sequence of sizes runs in a fresh process per allocator set-up:

  default     the caching allocator as a job gets it (weights and activations in one pool)
  expandable  the same with expandable segments (PYTORCH_CUDA_ALLOC_CONF), no separate pools
  pooled      dvlad.gpu.pools.DualPool: weights in a MemPool of their own, filled once, then the
              activation pool with expandable segments (what a job with budgets runs)

Per set-up: the reserved-over-allocated overhead at the peak (peak reserved / peak allocated - 1),
the fragmentation (bytes of free blocks inside split segments at their peak, over peak reserved),
and the largest rollout (envs per iteration; its largest learner minibatch) whose iterations fit
under the same memory cap (``--cap-gib``, enforced with set_per_process_memory_fraction). Run on the
GPU machine; ``--json`` prints one JSON line last (docs/bench/vram.json)::

    python3 scripts/bench_vram.py --preset 1b --lora --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

MODES = ("default", "expandable", "pooled")


def _iteration_sizes(rng: random.Random, envs: int, max_steps: int) -> tuple[int, int]:
    """One iteration's rollout: envs ready (one to all of the env groups) and segment steps."""
    return rng.choice([envs // 2, 3 * envs // 4, envs]), rng.randint(max(1, max_steps // 4), max_steps)


def _run_iterations(job, w, envs: int, max_steps: int, minibatches: int, iterations: int, seed: int) -> None:
    import torch

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        n, steps = _iteration_sizes(rng, envs, max_steps)
        data = w.rollout(job, n, steps, gen)
        w.update(job, data, minibatches)
        del data
        w.publish(job)


def child(args: argparse.Namespace) -> dict:
    """One set-up's figures, in this (fresh) process."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _vram_workload as w

    from dvlad.gpu.budgets import Budgets
    from dvlad.gpu.pools import DualPool

    device = torch.device("cuda", 0)
    pools = DualPool(device, Budgets(), expandable=True) if args.mode == "pooled" else None
    spec = w.env_spec()
    job = w.build(args.preset, args.lora, args.patch, device, spec, *([pools.weights] if pools else []))
    if pools is not None:
        pools.seal(job.weight_bytes())
    weights = job.weight_bytes()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    _run_iterations(job, w, args.envs, args.max_steps, args.minibatches, args.iterations, args.seed)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stats = torch.cuda.memory_stats(device)
    peak_reserved, peak_allocated = stats["reserved_bytes.all.peak"], stats["allocated_bytes.all.peak"]
    result = {"mode": args.mode, "weight_bytes": weights, "peak_reserved": peak_reserved,
              "peak_allocated": peak_allocated, "overhead": peak_reserved / peak_allocated - 1,
              "fragmentation": stats["inactive_split_bytes.all.peak"] / peak_reserved,
              "separate_weight_pool": bool(pools and pools.separate), "seconds": seconds}

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total), device)

    def fits(envs: int) -> bool:
        torch.cuda.empty_cache()
        try:
            _run_iterations(job, w, envs, args.max_steps, args.minibatches, args.probe_iterations, args.seed)
            torch.cuda.synchronize()
            return True
        except torch.OutOfMemoryError:
            job.optimizer.zero_grad(set_to_none=True)
            return False

    step = 4
    low, high = 0, step
    while fits(high):
        low, high = high, high * 2
    while high - low > step:  # doubling, then bisection on multiples of 4 envs
        mid = (low + high) // 2 // step * step
        low, high = (mid, high) if fits(mid) else (low, mid)
    result["max_envs"] = low
    result["max_minibatch"] = -(-low * args.max_steps // args.minibatches)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b", help="transformer-vla trunk preset (50m, 1b)")
    ap.add_argument("--lora", action="store_true", help="LoRA fine-tuning (else full)")
    ap.add_argument("--patch", type=int, default=16, help="patch size: 16 gives 153 tokens per observation")
    ap.add_argument("--envs", type=int, default=32, help="envs of a full rollout (the overhead phase)")
    ap.add_argument("--max-steps", type=int, default=16, help="longest segment; each iteration draws from a quarter up")
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=12, help="iterations of the overhead phase")
    ap.add_argument("--probe-iterations", type=int, default=3, help="iterations each max-batch probe must fit")
    ap.add_argument("--cap-gib", type=float, default=40.0, help="memory cap of the max-batch search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # a child's one set-up
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    results = {}
    for mode in args.modes.split(","):
        env = dict(os.environ)
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        if mode == "expandable":
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        argv = [a for a in sys.argv[1:] if a != "--json"]
        out = subprocess.run([sys.executable, __file__, *argv, "--mode", mode], env=env, check=True,
                             stdout=subprocess.PIPE, text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:10}: overhead {r['overhead']:6.1%}  fragmentation {r['fragmentation']:6.1%}  "
              f"peak reserved {r['peak_reserved'] / 2**30:6.2f} GiB of {r['peak_allocated'] / 2**30:6.2f} allocated  "
              f"max envs {r['max_envs']} (minibatch {r['max_minibatch']}) under {args.cap_gib:g} GiB  "
              f"{r['seconds']:.1f} s", flush=True)
    if args.json:
        import torch

        line = {"workload": {k: getattr(args, k) for k in ("preset", "lora", "patch", "envs", "max_steps",
                                                            "minibatches", "iterations", "cap_gib", "seed")},
                "torch": torch.__version__, "device": torch.cuda.get_device_name(0), "modes": results}
        for mode, key in (("default", "default"), ("pooled", "pooled"), ("expandable", "expandable")):
            if mode in results:
                line[f"{key}_overhead"] = round(results[mode]["overhead"], 4)
                line[f"{key}_fragmentation"] = round(results[mode]["fragmentation"], 4)
                line[f"{key}_max_batch"] = results[mode]["max_minibatch"]
        print(json.dumps(line))


if __name__ == "__main__":
    main()
