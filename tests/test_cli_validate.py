"""`dvla validate` (offline, no daemon): each kind of broken job file is reported with its key, line
and column and exits 2; every file in examples/ is valid; the CLI imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvla.cli.main import cli

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml"))


def validate(tmp_path: Path, text: str, *args: str):
    job = tmp_path / "job.toml"
    job.write_text(text)
    return CliRunner().invoke(cli, ["validate", str(job), *args])


@pytest.mark.parametrize(("text", "key", "line", "column", "reason"), [
    ('[job]\nname = "a"\n[env]\nnum_envs = "16"\n', "env.num_envs", 4, 1, 'expected an integer, got "16"'),
    ("[algo]\n  learning_rat = 0.1\n", "algo.learning_rat", 2, 3, 'did you mean "algo.learning_rate"'),
    ("[job]\nseed = 1\n\n[algos]\nname = 'ppo'\n", "algos", 4, 1, "unknown section (did you mean [algo]?)"),
    ('env = "reach"\n', "env", 1, 1, "expected a table [env], got"),
    ("[algo]\ngamma = 2.0\n", "algo.gamma", 2, 1, "must be in [0, 1]"),
    ("[env]\nnum_envs = 16\ngroups = 2\nworkers = 2\n[algo]\nname = 'grpo'\ngroup_size = 3\n"
     "[pipeline]\nsegment_steps = 40\n", "algo.group_size", 7, 1, "must be divisible by group_size (3)"),
    ("[train]\nresume = 1\n", "train.resume", 2, 1, "expected a boolean"),
    ('[policy]\n  name = "tiny_vla"\n', "policy.name", 2, 3, 'unknown policy "tiny_vla" (did you mean "tiny-vla"?)'),
    ("[algo]\nname = 'grpo'\n", "algo.name", 2, 1, 'at least the episode limit of env "reach" (40)'),
    ('[resources]\ndevice = "cuda"\n', "resources.device", 2, 1, 'device "cuda" needs gpus ≥ 1'),
    ("[policy.args]\nd_model = 32\n  d_modle = 32\n", "policy.args.d_modle", 3, 3,
     'unknown argument of policy "tiny-vla" (did you mean "policy.args.d_model"?)'),
    ('[env]\nname = "libero"\nmax_episode_steps = 220\n[env.args]\nsuite = "libero_spatial"\ncamera = ["wrist"]\n',
     "env.args.camera", 6, 1, 'unknown argument of env "libero" (did you mean "env.args.cameras"?)'),
], ids=["wrong-type", "unknown-key", "unknown-section", "section-not-a-table", "out-of-range", "contradiction",
        "bool-not-int", "unknown-policy", "grpo-episode-limit", "cuda-without-gpus", "policy-arg-typo",
        "env-arg-typo"])
def test_each_broken_file_names_the_key_line_and_column(tmp_path, text, key, line, column, reason):
    result = validate(tmp_path, text)
    assert result.exit_code == 2, result.output
    assert f"job.toml:{line}:{column}: {key}: " in result.output and reason in result.output
    (report,) = json.loads(validate(tmp_path, text, "--json").output)
    assert report["ok"] is False and {"key": key, "line": line, "column": column}.items() <= report["issues"][0].items()


@pytest.mark.parametrize(("text", "key", "line", "reason"), [
    ('[policy]\nname = "transformer-vla"\n[policy.args]\npretrained = "no/such/dir"\n', "policy.args.pretrained", 4,
     "no/such/dir: no such file or directory (the relative 'no/such/dir' is taken from the job file's folder"),
    ('[policy]\nname = "hf-vla"\n', "policy.args.pretrained", 1,
     'policy "hf-vla" needs it: the local Hugging Face checkpoint directory it builds on'),
    ('[algo]\nname = "bc"\ndemonstrations = "no/demos.hdf5"\n', "algo.demonstrations", 3,
     "no/demos.hdf5: no such file or directory"),
    ("[train]\ntotal_env_steps = 99999999999999999999999\n", "train.total_env_steps", 2, "must fit in 64 bits"),
    ("[train]\ntotal_env_steps = 9007199254740993\n", "train.total_env_steps", 2,
     "must be at most 9,007,199,254,740,992 (metric rows count env steps as 64-bit floats, exact up to 2^53)"),
    ("[env]\nnum_envs = 4611686018427387904\n", "env.num_envs", 2, "must be at most 65,536 (each env has its own "
                                                                   "observation and action slots in shared memory)"),
    ("[env]\nstep_timeout_s = 1e300\n", "env.step_timeout_s", 2, "must be at most 2,000,000"),
], ids=["missing-pretrained-dir", "hf-vla-without-pretrained", "missing-demonstrations", "beyond-64-bits",
        "env-steps-beyond-their-bound", "num-envs-beyond-memory", "wait-beyond-poll"])
def test_what_dvlad_or_the_job_would_refuse_is_refused_here(tmp_path, text, key, line, reason):
    """Each validated ok, then dvlad refused it at submit or the job failed once it ran (a bare MemoryError
    for num_envs; OverflowError for a wait poll() cannot take)."""
    result = validate(tmp_path, text)
    assert result.exit_code == 2, result.output
    assert f"job.toml:{line}:1: {key}: " in result.output and reason in result.output, result.output


def test_bad_toml_syntax_gives_tomllibs_line_and_column(tmp_path):
    result = validate(tmp_path, "[env]\nnum_envs = = 3\n")
    assert result.exit_code == 2 and "job.toml:2:12: invalid TOML: " in result.output, result.output
    (report,) = json.loads(validate(tmp_path, "[env\n", "--json").output)
    assert (report["issues"][0]["line"], report["issues"][0]["column"]) == (1, 5)


def test_every_problem_of_every_file_at_once_and_a_missing_file_is_a_usage_error(tmp_path):
    (tmp_path / "good.toml").write_text("")  # all defaults: a valid job
    (tmp_path / "bad.toml").write_text("[env]\nnum_envs = 3\nnum_env = 1\n[algo]\ngamma = -1\n")
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "good.toml"), str(tmp_path / "bad.toml"),
                                      str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'good.toml'}: ok"
    assert [ln.split(": ")[1] for ln in lines[1:4]] == ["env.num_envs", "env.num_env", "algo.gamma"]
    assert lines[4] == f"{tmp_path / 'missing.toml'}: no such file"
    assert "4 problem(s) in 2 of 3 file(s)" in result.stderr
    assert CliRunner().invoke(cli, ["validate"]).exit_code == 2  # click's usage error: no file given


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path):
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0 and result.output == f"{path}: ok\n", result.output


def test_examples_cover_every_built_in_env_and_algo():
    import tomllib

    pairs = set()
    for path in EXAMPLES:
        spec = tomllib.loads(path.read_text())
        pairs.add((spec.get("env", {}).get("name", "reach"), spec.get("algo", {}).get("name", "ppo")))
    assert pairs >= {(env, algo) for env in ("reach", "synthetic", "libero") for algo in ("ppo", "grpo")}


def test_the_cli_and_report_import_no_torch_and_help_lists_the_exit_codes():
    code = ("import sys, dvla.cli.main, dvla.report, dvla.topology; "
            "assert not {'torch', 'dvlad'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = CliRunner().invoke(cli, ["--help"]).output
    assert "Exit status:" in out and "3    the daemon is unreachable" in out and "_DVLA_COMPLETE=bash_source" in out
    for name, command in cli.commands.items():
        assert "Examples:" in (command.epilog or ""), name
