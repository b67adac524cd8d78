"""Several LoRA jobs on one GPU through a real dvlad: one base model shared, against each holding its
own; and a job that overflows its activation cap beside a neighbour that keeps running. One run.

Phases, each on a fresh set of jobs of one dvlad (NVML's GPU 0; ``--cpu``: the CPU):

  apart     three LoRA jobs (transformer-vla, ``--preset``) at once, each building its own base
            (``resources.share_base = false``): their summed memory
  shared    the same three jobs with ``share_base = true``: dvlad's holder holds one base, every job
            maps it; their summed memory, holder included
  overflow  two jobs sharing the GPU, one with a 1 MiB activation cap: it fails with the one-line
            reason naming the pool, the cap and the peak; its neighbour runs to the end (GPU only: the
            pools are GPU memory)

Memory is the GPU's used memory from NVML, its peak over the phase less the GPU's use before it; on
the CPU (``--cpu``), the summed proportional set size (PSS: a page mapped by several processes counts
once in all) of dvlad's children, sampled. Each job must learn: it succeeds, publishes versions, and
its policy moves (``approx_kl`` > 0). ``--json`` prints one JSON line last; exit 0 when every check
holds. Finishes in about 4 minutes on the H200 with the 1b preset::

    bash scripts/gpu_machine.sh python3 scripts/bench_share_gpu.py --json
    .venv/bin/python scripts/bench_share_gpu.py --cpu --tiny --json     # the same path on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]
NEEDS = ("aiohttp", "uvloop", "msgpack", "psutil", "prometheus_client", "click", "torch", "transformers", "peft")
GIB = 1 << 30


def job_spec(name: str, args: argparse.Namespace, share_base: bool, activation: str | None = None,
             preset: str | None = None) -> dict[str, Any]:
    """A LoRA job (same base for all: same policy and seed); ``activation``: its activation cap."""
    policy_args: dict[str, Any] = {"preset": preset or ("tiny" if args.tiny else args.preset), "patch_size": 16,
                                   "lora": {"r": 16}}
    if args.tiny:
        policy_args["trunk"] = {"num_hidden_layers": 2}
    envs, workers = (4, 1) if args.cpu else (8, 2)
    resources: dict[str, Any] = {"share_base": share_base}
    if not args.cpu:
        resources.update(device="cuda", gpus=1, share_gpus=True, weight_pool="16GiB",
                         activation_pool=activation or "12GiB")
    return {"job": {"name": name, "seed": 7}, "policy": {"name": "transformer-vla", "args": policy_args},
            "env": {"name": "synthetic", "num_envs": envs, "groups": 2, "workers": workers,
                    "args": {"step_ms": 1.0, "image_size": 32 if args.tiny else 64, "cameras": ["image"]}},
            "algo": {"update_epochs": 1, "minibatches": 2}, "pipeline": {"segment_steps": 8},
            "resources": resources,
            "train": {"total_env_steps": envs * 8 * args.updates, "resume": False, "log_every": 1}}


class Sampler:
    """The peak of a memory figure over a phase, sampled in a thread."""

    def __init__(self, read, period: float):
        self.read, self.period, self.peak = read, period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.read())
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def gpu_used() -> int:
    import pynvml

    pynvml.nvmlInit()
    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)


def children_pss(pid: int) -> int:
    import psutil

    total = 0
    for proc in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total


def learned(daemon, job_id: int) -> dict[str, Any]:
    """What the job did: its state, versions, and whether its policy moved (approx_kl > 0)."""
    from dvla import metric_names as m
    from dvlad.runtime.jobfiles import metrics_rows

    job = daemon.job(job_id)
    rows = metrics_rows(daemon.state_dir / "jobs" / str(job_id) / "run" / "metrics.jsonl")
    kl = [r[m.APPROX_KL] for r in rows if isinstance(r.get(m.APPROX_KL), int | float)]
    v_loss = [r[m.V_LOSS] for r in rows if isinstance(r.get(m.V_LOSS), int | float)]
    summary_path = daemon.state_dir / "jobs" / str(job_id) / "run" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    log = (daemon.state_dir / "jobs" / str(job_id) / "job.log").read_text(errors="replace")
    return {"id": job_id, "state": job["state"], "reason": job.get("reason"), "version": summary.get(m.VERSION),
            "moved": bool(kl) and max(kl) > 0, "v_loss_first": v_loss[0] if v_loss else None,
            "v_loss_last": v_loss[-1] if v_loss else None, "gpu_memory": summary.get("gpu_memory"),
            "mapped_shared_base": "shared base: mapped" in log}


def submit(daemon, spec: dict[str, Any]) -> int:
    status, body = daemon.call("POST", "/v1/jobs", {"spec": spec})
    if status != 201:
        raise SystemExit(f"dvlad refused job {spec['job']['name']}: {status} {body}")
    return body["job"]["id"]


def settled(read, idle: int, slack: int = 256 << 20, wait_s: float = 30.0) -> int:
    """The figure once the previous phase's processes have let go of their memory (within ``slack``
    of ``idle``, or after ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    now = read()
    while now > idle + slack and time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
    return now


def phase(daemon, specs: list[dict[str, Any]], read, period: float, timeout: float, idle: int) -> dict[str, Any]:
    """Run ``specs`` at once; the peak of ``read`` over the run less its value before."""
    before = settled(read, idle)
    t0 = time.monotonic()
    with Sampler(read, period) as sampler:
        ids = [submit(daemon, s) for s in specs]
        for i in ids:
            daemon.wait_state(i, {"succeeded", "failed", "cancelled"}, timeout=timeout)
    return {"bytes": sampler.peak - before, "wall_s": round(time.monotonic() - t0, 1),
            "jobs": [learned(daemon, i) for i in ids]}


def overflow(daemon, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """Two tiny jobs on the GPU, one capped at 1 MiB of activations."""
    over = submit(daemon, job_spec("over", args, False, "1MiB", "tiny"))
    fine = submit(daemon, job_spec("fine", args, False, "4GiB", "tiny"))
    ended = {i: daemon.wait_state(i, {"succeeded", "failed", "cancelled"}, timeout=timeout) for i in (over, fine)}
    reason = ended[over].get("reason") or ""
    return {"over": {"state": ended[over]["state"], "reason": reason}, "neighbour": ended[fine]["state"],
            "neighbour_ended_after": (ended[fine].get("ended_at") or 0) > (ended[over].get("ended_at") or 0),
            "same_gpu": ended[over]["gpu_ids"] == ended[fine]["gpu_ids"] == [0],
            "ok": ended[over]["state"] == "failed" and "activation pool over its cap: peak" in reason
            and "> cap 1 MiB (resources.activation_pool)" in reason and ended[fine]["state"] == "succeeded"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--cpu", action="store_true", help="run the jobs on the CPU (no GPU needed); no overflow phase")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer tiny trunk and small envs: a quick check of "
                        "the path (its base is too small to save memory next to the holder process's own)")
    parser.add_argument("--preset", default="1b", help="the trunk preset of the three LoRA jobs (default 1b)")
    parser.add_argument("--jobs", type=int, default=3, help="LoRA jobs per phase (default 3)")
    parser.add_argument("--updates", type=int, default=8, help="learner updates per job (default 8)")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds a phase's job may take at most")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last")
    args = parser.parse_args()
    missing = [n for n in NEEDS if importlib.util.find_spec(n) is None]
    if not args.cpu and importlib.util.find_spec("pynvml") is None:
        missing.append("pynvml (nvidia-ml-py)")
    if missing:
        print(json.dumps({"ok": False, "error": f"missing Python packages: {', '.join(missing)}"}))
        return 2

    from dvlad import testing

    t0 = time.monotonic()
    daemon = testing.Dvlad("[node]\ncpu_slots = 16\n").start(timeout=60)
    try:
        read = gpu_used if not args.cpu else (lambda: children_pss(daemon.proc.pid))
        period = 0.1 if not args.cpu else 0.5
        idle = read()
        result: dict[str, Any] = {"device": "cpu" if args.cpu else "cuda:0",
                                  "preset": "tiny" if args.tiny else args.preset, "jobs": args.jobs}
        for name, share in (("apart", False), ("shared", True)):
            specs = [job_spec(f"{name}{i}", args, share) for i in range(args.jobs)]
            result[name] = phase(daemon, specs, read, period, args.timeout, idle)
            print(f"{name}: {result[name]['bytes'] / GIB:.2f} GiB for {args.jobs} jobs in "
                  f"{result[name]['wall_s']} s; " + ", ".join(
                      f"job {j['id']} {j['state']} v{j['version']}" for j in result[name]["jobs"]), flush=True)
        jobs = result["apart"]["jobs"] + result["shared"]["jobs"]
        result["each_learned"] = all(j["state"] == "succeeded" and (j["version"] or 0) >= 2 and j["moved"]
                                     for j in jobs)
        result["shared_mapped"] = all(j["mapped_shared_base"] for j in result["shared"]["jobs"])
        result["saved_bytes"] = result["apart"]["bytes"] - result["shared"]["bytes"]
        result["shared_below_apart"] = result["shared"]["bytes"] < result["apart"]["bytes"]
        if args.cpu:
            result["overflow"] = {"ok": None, "skipped": "the pools and their caps are GPU memory"}
        else:
            result["overflow"] = overflow(daemon, args, args.timeout)
            print(f"overflow: {result['overflow']}", flush=True)
        # --tiny's base (a few MB) is smaller than the holder process's own footprint: there the
        # comparison is reported, not required
        result["ok"] = bool(result["each_learned"] and result["shared_mapped"]
                            and (result["shared_below_apart"] or args.tiny) and result["overflow"]["ok"] is not False)
        result["wall_s"] = round(time.monotonic() - t0, 1)
    finally:
        daemon.close()
    apart, together = result["apart"]["bytes"] / GIB, result["shared"]["bytes"] / GIB
    print(f"summed memory: apart {apart:.2f} GiB, shared {together:.2f} GiB (saved {apart - together:.2f} GiB); "
          f"each learned: {result['each_learned']}; ok: {result['ok']}", flush=True)
    if args.json:
        print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
