"""One definition of every metric name (``dvla.metric_names``), checked against real jobs' rows.

A renamed or dropped metric must fail here, not silently empty a screen: every key a real job writes
is declared, every declared key the job qualifies for is written, and every key the readers (progress
line, CSV and TensorBoard, Prometheus, ``dvla top``, ``dvla report``, the scripts) use is among them.
The readers' keys are read from their source: the names they import from ``dvla.metric_names``."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest
import torch

from dvla import metric_names
from dvla.metric_names import METRICS, When
from dvlad.runtime.job import run_job
from dvlad.runtime.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

READERS = [
    "dvlad/runtime/job.py",  # the progress line and summary.json
    "dvlad/runtime/metrics.py",  # CSV columns and TensorBoard tags
    "dvlad/server/prom.py",
    "sdk/dvla/top/snapshot.py",
    "sdk/dvla/rates.py",  # the lanes' rates over rows, for dvla top and dvla report
    "sdk/dvla/report.py",
    "sdk/dvla/cli/report.py",
    "scripts/bench_pipeline.py",
    "scripts/learning_async_vs_sync.py",
    "scripts/plot_run.py",
]
WRITERS = ["dvlad/lanes/reporter.py", "dvlad/lanes/learner.py", "dvlad/rl/losses.py", "dvlad/lanes/vram.py"]
SPELLED_NOWHERE = [*(r for r in READERS if r != "scripts/bench_pipeline.py"), "dvlad/lanes/reporter.py",
                   "dvlad/rl/losses.py"]
"""Modules in which a string equal to a metric's key can only mean that metric (the benchmark's own
report has keys of the same words; the learner's trajectory arrays are named ``version`` too)."""


def metric_keys_used(path: Path) -> set[str]:
    """The metric keys a module reaches through ``dvla.metric_names``: the constants it imports
    (``from dvla.metric_names import ENV_STEPS``) or reads off the module (``m.ENV_STEPS``),
    with the keys inside the tables it uses (``LANE_BUSY``, ``CSV_COLUMNS``, ``METRICS``)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "dvla.metric_names":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "dvla":
            aliases.update(a.asname or a.name for a in node.names if a.name == "metric_names")
    names.update(node.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases)
    keys: set[str] = set()
    for name in names:
        value = getattr(metric_names, name)
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else (
            list(value) if isinstance(value, tuple) else [value])
        keys.update(item for item in items if isinstance(item, str) and item in METRICS)
    return keys


def _qualifies(when: When, algo: str, rows: list[dict]) -> bool:
    """Whether a job of ``algo`` without auxiliary labels (on the GPU where torch sees one: device
    ``auto``) should write a metric present ``when``."""
    return {When.ALWAYS: True, When.AFTER_EPISODES: any(r[metric_names.EPISODES] for r in rows),
            When.WITH_CRITIC: algo == "ppo", When.WITH_AUX: False, When.ON_GPU: torch.cuda.is_available(),
            When.WITH_RANKS: False}[when]


@pytest.mark.slow  # a whole job per algorithm
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_a_real_jobs_rows_hold_exactly_the_declared_keys_every_reader_uses(small_spec, tmp_path, algo):
    spec = small_spec("async")
    if algo == "grpo":
        spec.algo.name, spec.algo.group_size, spec.pipeline.segment_steps = "grpo", 2, 10
        spec.env.args["max_episode_steps"] = 10  # whole episodes in a segment
    run_job(spec, tmp_path, quiet=True)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) >= 2
    written = {key for row in rows for key in row}

    assert written <= METRICS.keys(), f"written but not declared in dvla.metric_names: {written - METRICS.keys()}"
    expected = {k for k, metric in METRICS.items() if _qualifies(metric.when, algo, rows)}
    assert expected <= written, f"declared but never written: {expected - written}"
    always = {k for k, metric in METRICS.items() if metric.when is When.ALWAYS}
    assert all(always <= row.keys() for row in rows)

    for reader in READERS:
        used = metric_keys_used(ROOT / reader)
        assert used, f"{reader} reads no metric through dvla.metric_names"
        missing = {k for k in used & expected if k not in written}
        assert not missing, f"{reader} reads {missing}, which the job never wrote"

    with (tmp_path / "metrics.csv").open() as f:
        assert tuple(next(csv.reader(f))) == metric_names.CSV_COLUMNS


@pytest.mark.parametrize("module", READERS + WRITERS)
def test_every_reader_and_writer_takes_its_keys_from_metric_names(module):
    assert metric_keys_used(ROOT / module)


@pytest.mark.parametrize("module", SPELLED_NOWHERE)
def test_no_metric_key_is_spelled_out_where_the_constant_belongs(module):
    tree = ast.parse((ROOT / module).read_text())
    spelled = sorted({(node.lineno, node.value) for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in METRICS})
    assert not spelled, f"{module} spells metric keys instead of using dvla.metric_names: {spelled}"


def _docs_table() -> str:
    lines = ["| key | unit | in | TensorBoard | CSV | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| `{mt.name}` | {mt.unit or '–'} | {mt.when.value} | "
              f"{f'`{mt.tensorboard_tag}`' if mt.scalar else '–'} | {'yes' if mt.csv else ''} | {mt.meaning} |"
              for mt in METRICS.values()]
    return "\n".join(lines) + "\n"


def test_the_job_reference_lists_every_metric_as_declared():
    table = _docs_table()
    assert table in (ROOT / "docs/jobs.md").read_text(), f"docs/jobs.md's metric table should read:\n{table}"


def test_a_success_rate_counts_once_enough_episodes_have_ended():
    """One rule for dvla top, dvla report and the progress line: no success rate over too few episodes."""
    enough = metric_names.SUCCESS_MIN_EPISODES
    assert metric_names.success_rate_of({"success_rate": 1.0, "episodes": enough - 1}) is None
    assert metric_names.success_rate_of({"success_rate": 0.8, "episodes": enough}) == 0.8
    assert metric_names.success_rate_of({"episodes": 500}) is None  # no episode ended in the window yet
    assert metric_names.success_rate_of({"success_rate": 0.5}) == 0.5  # rows from before the count existed
