"""Run one job without the daemon: ``python -m dvlad.runtime.job JOB.toml``.

This is exactly what ``dvlad`` launches for a job. Exit codes: 0 succeeded, 1 the job
failed (one line with the reason is printed; ``summary.json`` keeps it with the traceback), 2 the job
file is invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from dvla import metric_names as m
from dvla.spec import JobSpec, SpecError, load_spec
from dvlad.lanes.pipeline import JobFailed, Pipeline
from dvlad.lanes.reporter import Progress
from dvlad.runtime.metrics import MetricsSink

SCRIPT = "dvlad-job"
"""The console script that runs :func:`main` (pyproject.toml)."""


def output_dir_of(spec: JobSpec, override: str | None = None) -> Path:
    return Path(override or spec.job.output_dir.replace("{name}", spec.job.name))


def format_progress(values: dict[str, float], total: int) -> str:
    """One human line per update: progress, throughput, learning, lanes."""
    pct = 100.0 * values[m.ENV_STEPS] / max(total, 1)
    success = values.get(m.SUCCESS_RATE)
    parts = [
        f"[{pct:5.1f}%] v{int(values[m.VERSION]):<4d} {int(values[m.ENV_STEPS]):>8d} steps",
        f"{values[m.ENV_STEPS_PER_S]:7.0f} steps/s",
        f"success {success:5.2f}" if success is not None else "success   -  ",
        f"return {values.get(m.EPISODE_RETURN, float('nan')):6.2f}",
        f"stale {values[m.STALENESS_MEAN]:.2f}",
        "busy " + " ".join(f"{lane[:5]} {values[m.LANE_BUSY[lane]]:4.0%}" for lane in ("sample", "infer", "learn")),
    ]
    return " | ".join(parts)


def run_job(spec: JobSpec, output_dir: Path, quiet: bool = False) -> dict[str, float]:
    """Run ``spec`` to completion, writing metrics, checkpoints and a summary to ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "job.json").write_text(json.dumps(asdict(spec), indent=2))
    sink = MetricsSink(output_dir)

    def progress(p: Progress) -> None:
        sink.write(p.values, p.staleness_hist)
        if not quiet:
            print(format_progress(p.values, spec.train.total_env_steps), flush=True)

    pipeline = Pipeline(spec, output_dir, on_progress=progress, on_log=None if quiet else print)
    previous = signal.signal(signal.SIGTERM, lambda *_: pipeline.request_stop())
    t0 = time.monotonic()
    try:
        last = pipeline.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        sink.close()
    status = "stopped" if pipeline.stop_requested else "succeeded"  # stopped: asked to, before its budget
    summary = {"status": status, "wall_s": time.monotonic() - t0, "checkpoint": pipeline.checkpoint,
               **{k: last[k] for k in (m.ENV_STEPS, m.VERSION, m.SUCCESS_RATE, m.EPISODE_RETURN) if k in last}}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def failure_reason(err: Exception) -> str:
    """``err`` as the one line a failed job prints and records as its reason.

    Why cut and prefixed: a failure in an env worker or the learner carries that process's traceback
    in its message, whose last line names the error; and an unexpected exception's message alone
    (``'obs'`` for a KeyError) says nothing without its type. JobFailed and ValueError are written
    for people and stay as they are."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    reason = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
    if isinstance(err, JobFailed | ValueError) and reason:
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


def main(argv: list[str] | None = None) -> int:
    prog = SCRIPT if Path(sys.argv[0]).name == SCRIPT else "python -m dvlad.runtime.job"  # as it was started
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a D-VLA job file in this process, without the daemon.",
        epilog=f"example: {prog} examples/reach_ppo.toml --output-dir runs/try1")
    parser.add_argument("job_file", help="the job's TOML file (see docs/jobs.md)")
    parser.add_argument("--output-dir", help="where metrics, checkpoints and TensorBoard logs go "
                                             "(default: [job] output_dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.job_file)
    except SpecError as err:
        print(err, file=sys.stderr)
        return 2
    out = output_dir_of(spec, args.output_dir)
    try:
        summary = run_job(spec, out, quiet=args.quiet)
    except KeyboardInterrupt:
        print("job interrupted", file=sys.stderr)
        return 1
    except Exception as err:  # every failure: one line and a summary, never a traceback on the terminal
        record_failure(out, err)
        return 1
    print(f"done: {int(summary.get(m.ENV_STEPS, 0))} env steps, success rate "
          f"{summary.get(m.SUCCESS_RATE, float('nan')):.2f}; metrics and checkpoint in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
