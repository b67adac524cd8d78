"""One job in one mode, its steady env steps/s and each process's CPU per env step.

Why beside ``bench_pipeline.py``: this script imports only what every version of the code has
(``load_spec``, ``Pipeline``), so the same harness measures another commit by putting that tree
first on the path (an A/B across commits, rounds interleaved by the caller):

    git worktree add /tmp/before 911ddb2
    (cd /tmp/before && PYTHONPATH=$PWD:$PWD/sdk ~-/.venv/bin/python ~-/scripts/bench_modes.py async)
    .venv/bin/python scripts/bench_modes.py async --set env.nice=0

The job file is the current directory's (each tree's own example, in the settings that tree knows).

The window runs from the second update's row (the first includes warm-up) to the last row made
before the actors stopped (``Pipeline.sampling_ended_s``; for code without it, the last row whose
env steps grew). CPU is read from ``/proc`` for this process and every child at both ends of the
window: core-ms per env step of the actor's process, each env worker and the learner, which says
whether a slower run did more work or waited more.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from tempfile import TemporaryDirectory

import psutil

from dvla.spec import load_spec
from dvlad.lanes.pipeline import Pipeline


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (process name, user + system CPU seconds) of this process and all its children."""
    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = (p.name(), t.user + t.system)
        except psutil.Error:  # a process that ended meanwhile
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("sync", "async"))
    parser.add_argument("--job", type=Path, default=Path("examples/reach_ppo.toml"),
                        help="job file (default: the current directory's examples/reach_ppo.toml)")
    parser.add_argument("--steps", type=int, default=8000, help="env steps (default 8000)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a job setting (a Python literal), e.g. env.nice=0; repeatable")
    args = parser.parse_args()
    spec = load_spec(args.job)
    spec.job.mode, spec.train.total_env_steps, spec.train.resume = args.mode, args.steps, False
    spec.pipeline.segment_steps = min(spec.pipeline.segment_steps, 16)  # bench_pipeline --quick's settings
    spec.algo.update_epochs = 1
    for setting in args.set:
        key, _, value = setting.partition("=")
        section, _, name = key.partition(".")
        if not hasattr(getattr(spec, section, None), name):
            parser.error(f"--set {setting!r}: no setting {key!r}")
        setattr(getattr(spec, section), name, ast.literal_eval(value))
    rows: list[dict] = []
    cpu: list[dict[int, tuple[str, float]]] = []

    def progress(p) -> None:
        rows.append(p.values)
        cpu.append(cpu_seconds())

    with TemporaryDirectory() as tmp:
        pipeline = Pipeline(spec, Path(tmp), on_progress=progress)
        pipeline.run()
    ended = getattr(pipeline, "sampling_ended_s", None)
    last = max(i for i in range(1, len(rows)) if (rows[i]["time_s"] <= ended if ended is not None
                                                  else rows[i]["env_steps"] > rows[i - 1]["env_steps"]))
    steps = rows[last]["env_steps"] - rows[1]["env_steps"]
    span = rows[last]["time_s"] - rows[1]["time_s"]
    print(f"{args.mode}: {steps / span:.0f} env steps/s over rows 1..{last} of {len(rows)} "
          f"({' '.join(args.set) or 'the job as it is'})")
    total = 0.0
    for pid, (name, after) in cpu[last].items():
        if pid in cpu[1]:
            used = after - cpu[1][pid][1]
            total += used
            print(f"  {name:18s} {1e3 * used / steps:6.3f} core-ms per env step   {used / span:4.2f} cores")
    print(f"  {'all':18s} {1e3 * total / steps:6.3f} core-ms per env step   {total / span:4.2f} cores", flush=True)


if __name__ == "__main__":
    main()
