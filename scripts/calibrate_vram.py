"""Measure a transformer-vla job's two pools on this GPU, for the memory estimator's calibration table.

For each size (trunk preset, full or LoRA fine-tuning, tokens per observation) it builds what a job's
weight pool holds (learner and actor replicas, Adam state, staging buffer) and measures its bytes,
then the transient peak above it of one learner minibatch step (forward, backward, Adam) at a few
minibatch sizes and of one actor batch at a few batch sizes: the numbers
``dvlad/gpu/memory_estimate.py`` is fitted to. Run on the GPU machine; commit its ``--json`` line as
``dvlad/gpu/memory_calibration.json``:

    python3 scripts/calibrate_vram.py --json | tail -1 > dvlad/gpu/memory_calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _vram_workload as w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="50m,1b")
    ap.add_argument("--patches", default="16,8", help="patch sizes: 16 gives 153 tokens per observation, 8 537")
    ap.add_argument("--minibatches", default="16,64")
    ap.add_argument("--actor-batches", default="32,128")
    ap.add_argument("--json", action="store_true", help="print the table as one JSON line last")
    args = ap.parse_args()
    device = torch.device("cuda")
    spec = w.env_spec()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for preset in args.presets.split(","):
        for lora in (False, True):
            for patch in map(int, args.patches.split(",")):
                first = len(rows)
                job = w.build(preset, lora, patch, device, spec)
                cfg = job.learner.trunk.config
                base = {"preset": preset, "lora": lora, "tokens": w.tokens_per_observation(job),
                        "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                        "intermediate": cfg.intermediate_size,
                        "params": sum(p.numel() for p in job.learner.parameters()),
                        "trainable": sum(p.numel() for p in job.learner.published_parameters()),
                        "weight_bytes": job.weight_bytes()}
                for mb in map(int, args.minibatches.split(",")):
                    obs = w.observations(job, mb, gen)
                    with w.autocast(job):
                        tokens = job.actor.act(obs).tokens
                    w.learner_step(job, obs, tokens)  # warm-up: kernels, workspaces
                    with w.peak_of(device) as learn:
                        w.learner_step(job, obs, tokens)
                    rows.append({**base, "kind": "learner", "batch": mb, "peak": learn["peak"]})
                    del obs, tokens
                for ab in map(int, args.actor_batches.split(",")):
                    obs = w.observations(job, ab, gen)
                    with torch.no_grad(), w.autocast(job), w.peak_of(device) as act:
                        job.actor.act(obs)
                    rows.append({**base, "kind": "actor", "batch": ab, "peak": act["peak"]})
                    del obs
                for r in rows[first:]:
                    print(f"{preset:>4} {'lora' if lora else 'full'} tokens {r['tokens']:4d} {r['kind']:7} "
                          f"batch {r['batch']:4d}: weights {r['weight_bytes'] / 2**30:6.2f} GiB, "
                          f"peak {r['peak'] / 2**30:7.3f} GiB", flush=True)
                del job
                torch.cuda.empty_cache()
    table = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "dtype": "bfloat16",
             "optimizer": "adam", "rows": rows}
    if args.json:
        print(json.dumps(table))


if __name__ == "__main__":
    main()
