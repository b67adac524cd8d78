"""Run one job without the daemon: ``python -m dvlad.runtime.job JOB.toml``.

This is exactly what ``dvlad`` launches for a job. It runs until a limit of the job's budget holds
(``train.total_env_steps``, ``train.max_minutes`` of wall clock from the process's start, the success
target) or it is asked to stop (SIGTERM, Ctrl-C: both checkpoint first); ``summary.json`` and the final
line say which (:mod:`dvla.stops`) and how far the budget got. A run directory with a checkpoint resumes
from it, its success window included (``dvlad/lanes/budget.py``), or does nothing if its budget is
already spent. Exit statuses: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil

from dvla import metric_names as m
from dvla import stops
from dvla.admission import admit_file
from dvla.checkpoint import CHECKPOINT_NAME
from dvla.spec import JobSpec, SpecError
from dvlad.gpu.budgets import pool_report
from dvlad.lanes.budget import ResumePoint, resume_point
from dvlad.lanes.env_workers import EnvWorkerError
from dvlad.lanes.node_part import VARIABLES, NodePart
from dvlad.lanes.pipeline import JobFailed, Pipeline, StoppedInSetup
from dvlad.lanes.reporter import Progress
from dvlad.runtime.metrics import MetricsSink
from dvlad.segments import PREFIX_ENV, reclaim, standalone_prefix

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "done: a limit of its budget held (env steps, max_minutes, success target)",
    EXIT_FAILED: "failed (summary.json says why)",
    EXIT_INVALID: "invalid job file",
    EXIT_STOPPED: "stopped on request (SIGTERM or Ctrl-C) after a checkpoint; run it again to resume",
    EXIT_INTERRUPTED: "a second Ctrl-C: stopped at once, no final checkpoint or summary",
}
"""The job runner's exit statuses (README.md and docs/jobs.md list them)."""

SCRIPT = "dvlad-job"
"""The console script that runs :func:`main` (pyproject.toml)."""


def output_dir_of(spec: JobSpec, override: str | None = None) -> Path:
    return Path(override or spec.job.output_dir.replace("{name}", spec.job.name))


def format_progress(values: dict[str, float], total: int) -> str:
    """One human line per update: progress, throughput, learning, lanes. The success rate shows once
    enough episodes have ended (:data:`~dvla.metric_names.SUCCESS_MIN_EPISODES`), beside their count."""
    pct = 100.0 * values[m.ENV_STEPS] / max(total, 1)
    success = m.success_rate_of(values)
    parts = [
        f"[{pct:5.1f}%] v{int(values[m.VERSION]):<4d} {int(values[m.ENV_STEPS]):>8d} steps",
        f"{values[m.ENV_STEPS_PER_S]:7.0f} steps/s",
        (f"success {success:4.2f}" if success is not None else "success   - ")
        + f" of {int(values[m.EPISODES]):>5d} ep",
        f"return {values.get(m.EPISODE_RETURN, float('nan')):6.2f}",
        f"stale {values[m.STALENESS_MEAN]:.2f}",
        "busy " + " ".join(f"{lane[:5]} {values[m.LANE_BUSY[lane]]:4.0%}" for lane in ("sample", "infer", "learn")),
    ]
    return " | ".join(parts)


def process_started() -> float:
    """``time.monotonic()`` when this process started: ``train.max_minutes`` counts from there, as
    Slurm's ``--time`` does (interpreter start and imports included: torch's alone take seconds)."""
    age = time.time() - psutil.Process().create_time()
    return time.monotonic() - max(age, 0.0)


def episode_numbers(total: int, successes: Sequence[float], returns: Sequence[float]) -> dict[str, float]:
    """The episodes part of a summary: how many ended, how many the success window holds, and its success
    rate and mean return once enough have ended to mean something (:func:`dvla.metric_names.success_rate_of`)."""
    out: dict[str, float] = {m.EPISODES: total, "window_episodes": len(successes)}
    if successes and total >= m.SUCCESS_MIN_EPISODES:
        out[m.SUCCESS_RATE] = float(np.mean(successes))
        out[m.EPISODE_RETURN] = float(np.mean(returns))
    return out


def _write_summary(output_dir: Path, summary: dict) -> None:
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def _untrained(spec: JobSpec, output_dir: Path, point: ResumePoint | None, status: str, reason: str,
               **extra: float | bool) -> dict:
    """The summary of a run that trained nothing, written from what the checkpoint it resumed carries
    (without one: nothing done, no checkpoint)."""
    carried = point.carried if point else None
    window = episode_numbers(carried.episodes, carried.successes, carried.returns) if carried else {}
    summary = {"status": status, "stop_reason": reason, m.ENV_STEPS: point.env_steps if point else 0,
               stops.TOTAL_ENV_STEPS: spec.train.total_env_steps, "trained": False,
               "checkpoint": str(output_dir / CHECKPOINT_NAME) if point else None,
               m.VERSION: point.version if point else 0, **window, **extra}
    _write_summary(output_dir, summary)
    return summary


def _already_done(spec: JobSpec, output_dir: Path, point: ResumePoint, reason: str) -> dict:
    """The summary of a run whose budget its checkpoint has already spent: nothing is trained (rather
    than one more update)."""
    summary = _untrained(spec, output_dir, point, "succeeded", reason, wall_s=0.0)
    print(f"nothing to train: {output_dir} {stops.describe(summary)} (version {point.version}); raise "
          "train.total_env_steps (or the target) to train on, or set train.resume = false to start over", flush=True)
    return summary


def run_job(spec: JobSpec, output_dir: Path, quiet: bool = False, started_at: float | None = None) -> dict:
    """Run ``spec`` until a limit of its budget holds or it is asked to stop (SIGTERM, Ctrl-C), writing
    metrics, checkpoints and a summary to ``output_dir``. ``started_at`` (``time.monotonic()``, default:
    now) is when the job began, which ``train.max_minutes`` counts from."""
    t0 = time.monotonic() if started_at is None else started_at
    part = NodePart.from_env(spec.placement.nodes)  # one node's part of a job of several (node_part.py)
    output_dir.mkdir(parents=True, exist_ok=True)
    point = resume_point(output_dir, spec.train.resume)
    if point is not None:
        spent = point.spent(spec.train)
        if spent is not None:
            return _already_done(spec, output_dir, point, spent)
        window = (f"; its {point.carried.episodes} episodes' success window carried over" if point.carried
                  else "; no episode window saved with it: the success rate starts over")
        print(f"resuming from {point.env_steps} env steps (version {point.version}) in {output_dir}{window}",
              flush=True)
    (output_dir / "job.json").write_text(json.dumps(asdict(spec), indent=2))
    sink = MetricsSink(output_dir)

    def progress(p: Progress) -> None:
        sink.write(p.values, p.staleness_hist)
        if not quiet:
            print(format_progress(p.values, spec.train.total_env_steps), flush=True)

    pipeline = Pipeline(spec, output_dir, on_progress=progress, on_log=None if quiet else print, started_at=t0,
                        part=part)

    def interrupt(*_) -> None:
        if pipeline.stop_reason == stops.INTERRUPTED:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        pipeline.request_stop(stops.INTERRUPTED)
        print("interrupted: checkpointing and stopping (Ctrl-C again to stop at once, without either)",
              file=sys.stderr, flush=True)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: pipeline.request_stop(stops.SIGTERM)),
                signal.SIGINT: signal.signal(signal.SIGINT, interrupt)}
    try:
        last = pipeline.run()
    except StoppedInSetup as stopped:  # its lanes are down: what the run directory holds is final
        wall_s = time.monotonic() - t0
        return _untrained(spec, output_dir, point, "stopped", str(stopped), wall_s=wall_s, setup_s=wall_s,
                          during_setup=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sink.close()
    episodes = pipeline.actor.episodes  # replica 0's, which the reporter merges the others' into
    returns, successes, _ = episodes.window()
    setup_s = pipeline.timeline_origin - t0
    summary = {"status": "stopped" if pipeline.stop_requested else "succeeded",  # stopped: asked to, before a limit
               "stop_reason": pipeline.stop_reason,
               m.ENV_STEPS: int(last[m.ENV_STEPS]), stops.TOTAL_ENV_STEPS: spec.train.total_env_steps,
               "wall_s": time.monotonic() - t0, "setup_s": setup_s, "checkpoint": pipeline.checkpoint,
               m.VERSION: int(last.get(m.VERSION, point.version if point else 0)),
               **episode_numbers(episodes.total, successes, returns),
               **pool_report(spec, pipeline.pool_peaks, m.GPU_WEIGHT_BYTES, m.GPU_ACTIVATION_BYTES)}
    if pipeline.stop_reason == stops.MAX_MINUTES and setup_s >= 60 * spec.train.max_minutes:
        summary["during_setup"] = True
    if part is not None and pipeline.reporter is not None:  # env_steps above: every node's
        digest = pipeline.reporter.other_nodes.weights_digest
        summary.update(node=part.node, nodes=part.nodes, node_env_steps=pipeline.reporter.node_env_steps,
                       weights_digest=list(digest) if digest else None)
    _write_summary(output_dir, summary)
    return summary


def final_line(summary: dict, out: Path) -> str:
    """The job's last line: what stopped it, how far its budget got, where its results are."""
    success = summary.get(m.SUCCESS_RATE)
    episodes = int(summary.get(m.EPISODES, 0))
    learned = (f"success {success:.2f} over the last {int(summary['window_episodes'])} of {episodes} episodes"
               if success is not None else
               f"success not shown ({episodes} episodes ended, fewer than {m.SUCCESS_MIN_EPISODES})")
    results = f"metrics and checkpoint in {out}"
    if summary.get("trained") is False:  # spent before, or stopped during set-up: the run directory is as it was
        learned, results = "nothing trained", (f"its checkpoint in {out} as it was" if summary.get("checkpoint")
                                               else "no checkpoint written")
    head = "stopped" if summary["status"] == "stopped" else "done"
    tail = "; run it again to resume" if summary["status"] == "stopped" else ""
    return f"{head}: {stops.describe(summary)} (version {int(summary[m.VERSION])}); {learned}; {results}{tail}"


def failure_reason(err: Exception) -> str:
    """``err`` as the one line a failed job prints and records as its reason.

    Why cut and prefixed: a failure in an env worker or the learner carries that process's traceback
    in its message, whose last line names the error; and an unexpected exception's message alone
    (``'obs'`` for a KeyError) says nothing without its type. JobFailed, EnvWorkerError and ValueError
    are written for people and stay as they are."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    last = re.sub(r"^(?:\w+\.)+(?=\w+: )", "", lines[-1])  # "dvlad.lanes.learner.NonFiniteError: " without its module
    reason = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {last}"
    if isinstance(err, JobFailed | EnvWorkerError | ValueError) and reason:
        return reason
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def record_failure(out: Path, err: Exception) -> None:
    """Say why the job failed in one line and in ``summary.json`` (with the traceback, which the
    terminal and the daemon's job log are spared). A directory that cannot be written is skipped:
    the line still tells why."""
    reason = failure_reason(err)
    print(f"job failed: {reason}", file=sys.stderr)
    summary = {"status": "failed", "reason": reason, "traceback": traceback.format_exc()}
    with contextlib.suppress(OSError):
        (out / "summary.json").write_text(json.dumps(summary, indent=2))


def load_job_file(path: str) -> JobSpec:
    """The job file's spec as ``dvla submit`` and dvlad would take it (:mod:`dvla.admission`): its relative
    paths (``policy.checkpoint``, ``pretrained``, ...) taken from the file's folder and each checked there;
    SpecError with the key and line if not. ``job.output_dir`` and ``--output-dir`` stay relative to the
    current directory."""
    return admit_file(path)[0]


def main(argv: list[str] | None = None) -> int:
    started_at = process_started()
    prog = SCRIPT if Path(sys.argv[0]).name == SCRIPT else "python -m dvlad.runtime.job"  # as it was started
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a D-VLA job file in this process, without the daemon.",
        epilog=f"example: {prog} examples/reach_ppo.toml --output-dir runs/try1\n\nexit status: "
               + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
               + f"\n\na job of placement.nodes > 1 runs as one part per node, each this command with "
               f"{', '.join(VARIABLES)} set by the coordinating dvlad (docs/planes.md, \"Several nodes\")",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job_file", help="the job's TOML file (see docs/jobs.md); its relative paths are "
                                         "taken from its folder")
    parser.add_argument("--output-dir", help="where metrics, checkpoints and TensorBoard logs go "
                                             "(default: [job] output_dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        spec = load_job_file(args.job_file)
    except SpecError as err:
        print(err, file=sys.stderr)
        return EXIT_INVALID
    out = output_dir_of(spec, args.output_dir)
    # the job's processes name their /dev/shm segments by this (dvlad sets it); whatever a failure left
    # there goes when the job ends (dvlad also removes it if the job is killed)
    prefix = os.environ.setdefault(PREFIX_ENV, standalone_prefix())
    try:
        summary = run_job(spec, out, quiet=args.quiet, started_at=started_at)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the job's signal handlers were set
        print("job interrupted: stopped at once, without a final checkpoint or summary", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # every failure: one line and a summary, never a traceback on the terminal
        record_failure(out, err)
        return EXIT_FAILED
    finally:
        reclaim(prefix)
    print(final_line(summary, out), flush=True)
    return EXIT_STOPPED if summary["status"] == "stopped" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
