"""The job-spec schema: every refusal names the key and the exact line; valid files round-trip."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dvla
from dvla import catalog
from dvla.spec import (
    JobSpec,
    SpecError,
    SpecIssue,
    dump_toml,
    load_spec,
    parse_spec,
    spec_from_dict,
    spec_to_dict,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def refuse(text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), "job.toml")
    return info.value.issues


def only(text: str) -> SpecIssue:
    issues = refuse(text)
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


# ---- types ---------------------------------------------------------------------------------


def test_wrong_type_names_key_line_and_value():
    issue = only(
        """\
        [job]
        name = "t"

        [env]
        num_envs = "16"
        """
    )
    assert (issue.key, issue.line, issue.column) == ("env.num_envs", 5, 1)
    assert str(issue) == 'job.toml:5:1: env.num_envs: expected an integer, got "16"'


def test_bool_is_not_an_int_but_an_int_is_a_float():
    issue = only("[env]\nworkers = true\n")
    assert (issue.key, issue.line) == ("env.workers", 2)
    assert "expected an integer, got true" in issue.reason
    spec = parse_spec("[algo]\nlearning_rate = 1\n")
    assert spec.algo.learning_rate == 1.0 and isinstance(spec.algo.learning_rate, float)


def test_non_finite_float_refused():
    issue = only("[algo]\n\ngamma = nan\n")
    assert (issue.key, issue.line) == ("algo.gamma", 3)


def test_bad_literal_lists_allowed_values():
    issue = only('[job]\nmode = "asink"\n')
    assert (issue.key, issue.line) == ("job.mode", 2)
    assert '"async", "sync"' in issue.reason and 'did you mean "async"' in issue.reason
    issue = only('[resources]\ndevice = "gpu"\n')
    assert (issue.key, issue.line) == ("resources.device", 2)
    assert '"auto", "cpu", "cuda"' in issue.reason


def test_section_that_is_not_a_table():
    issue = only('[job]\nseed = 1\n\nenv = 3\n')
    assert (issue.key, issue.line) == ("job.env", 4)
    issue = only('env = 3\n')
    assert (issue.key, issue.line) == ("env", 1)
    assert "expected a table" in issue.reason


def test_args_accept_any_table_but_no_dates():
    spec = parse_spec(
        textwrap.dedent(
            """\
            [env]
            name = "mine.envs:make"        # a user's factory takes what it takes
            [env.args]
            step_ms = 5
            nested = { a = [1, 2.5, "x"], b = { c = true } }
            [policy]
            name = "mine.models:make"
            args = { hidden = 64 }
            """
        )
    )
    assert spec.env.args == {"step_ms": 5, "nested": {"a": [1, 2.5, "x"], "b": {"c": True}}}
    assert spec.policy.args == {"hidden": 64}
    issue = only("[env]\nname = 'mine.envs:make'\n[env.args]\nx = 1\nwhen = 1979-05-27\n")
    assert (issue.key, issue.line) == ("env.args.when", 5)


# ---- unknown keys and sections -------------------------------------------------------------


def test_unknown_key_suggests_the_closest():
    issue = only(
        """\
        [algo]
        name = "ppo"
        learning_rat = 1e-3
        """
    )
    assert (issue.key, issue.line) == ("algo.learning_rat", 3)
    assert 'did you mean "algo.learning_rate"' in issue.reason


def test_key_in_the_wrong_section_points_to_its_home():
    issue = only("[env]\nnum_envs = 8\nclip_coef = 0.1\n")
    assert (issue.key, issue.line) == ("env.clip_coef", 3)
    assert '"algo.clip_coef"' in issue.reason
    issue = only('name = "x"\n[env]\n')
    assert (issue.key, issue.line) == ("name", 1)
    assert "top level" in issue.reason


def test_unknown_section_suggests_the_closest():
    issue = only(
        """\
        [job]
        name = "x"

        [algos]
        name = "ppo"
        """
    )
    assert (issue.key, issue.line, issue.column) == ("algos", 4, 1)
    assert "unknown section" in issue.reason and "[algo]" in issue.reason


# ---- TOML syntax ---------------------------------------------------------------------------


def test_bad_toml_syntax_has_line_and_column():
    issue = only('[job]\nname = "x"\nseed = tru\n')
    assert (issue.key, issue.line, issue.column) == ("", 3, 8)
    assert issue.reason.startswith("invalid TOML: ")
    assert str(issue).startswith("job.toml:3:8: invalid TOML: ")


def test_toml_error_at_end_of_document_gets_the_last_line():
    issue = only("[job]\nseed =")
    assert issue.key == "" and issue.line == 2


# ---- cross-field checks --------------------------------------------------------------------


def test_num_envs_divisible_by_groups_times_workers():
    issue = only(
        """\
        [env]
        groups = 2
        workers = 2
        num_envs = 15
        """
    )
    assert (issue.key, issue.line) == ("env.num_envs", 4)
    assert "divisible by groups × workers (2 × 2 = 4)" in issue.reason


def test_cross_field_issue_blames_the_key_the_user_wrote():
    issue = only("\n[env]\ngroups = 3\n")  # num_envs 16 is the default: groups is to blame
    assert (issue.key, issue.line) == ("env.groups", 3)


def test_dotted_keys_at_the_top_level_are_located():
    issue = only('job.name = "x"\nenv.num_envs = 15\n')
    assert (issue.key, issue.line, issue.column) == ("env.num_envs", 2, 1)


def test_inline_table_keys_are_located():
    issue = only('job = { name = "x" }\nenv = { groups = 2, num_env = 3 }\n')
    assert (issue.key, issue.line, issue.column) == ("env.num_env", 2, 21)


def test_multiline_strings_and_arrays_do_not_confuse_the_locator():
    issue = only(
        '''\
        [policy]
        name = "mine.models:make"
        [policy.args]
        prompt = """
        [env]
        num_envs = 1
        """
        tokens = [
          1, # [env]
          2,
        ]
        [env]
        num_envs = "x"
        '''
    )
    assert (issue.key, issue.line) == ("env.num_envs", 13)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("[algo]\nclip_coef = 1.0\n", "algo.clip_coef", 2),
        ("[algo]\nclip_coef = 0\n", "algo.clip_coef", 2),
        ("[algo]\nclip_coef = 0.5\nratio_cap = 1.5\n", "algo.ratio_cap", 3),
        ("[algo]\n\nratio_cap = 1.1\n", "algo.ratio_cap", 3),
        ("[algo]\ngamma = 1.01\n", "algo.gamma", 2),
        ("[algo]\ngae_lambda = -0.1\n", "algo.gae_lambda", 2),
        ("[algo]\nlearning_rate = 0\n", "algo.learning_rate", 2),
        ("[pipeline]\nmax_staleness = -1\n", "pipeline.max_staleness", 2),
        ("[env]\nworkers = 0\n", "env.workers", 2),
        ("[env]\nnice = 20\n", "env.nice", 2),
        ("[env]\nnice = -1\n", "env.nice", 2),
        ("[train]\ntotal_env_steps = 0\n", "train.total_env_steps", 2),
        ("[train]\nstop_at_success = 1.5\n", "train.stop_at_success", 2),
        ("[train]\nstop_at_success = -0.1\n", "train.stop_at_success", 2),
        ("[train]\nstop_after_updates = 0\n", "train.stop_after_updates", 2),
        ('[resources]\ndevice = "cpu"\ngpus = 1\n', "resources.gpus", 3),
        ('[job]\nname = "../x"\n', "job.name", 2),
        ('[job]\noutput_dir = "runs/{user}"\n', "job.output_dir", 2),
        ('[policy]\nname = "pkg.mod:"\n', "policy.name", 2),
        ('[resources]\ndevice = "cuda"\n', "resources.device", 2),
        ("[placement]\nnodes = 0\n", "placement.nodes", 2),
        ("[placement]\n\ncollective_timeout_s = 0\n", "placement.collective_timeout_s", 3),
    ],
)
def test_value_checks(text, key, line):
    issue = only(text)
    assert (issue.key, issue.line) == (key, line), str(issue)


def test_every_count_has_an_upper_bound_that_names_its_key_and_why():
    """env.num_envs = 4611686018427387904 passed validation and submit, and failed the job with a bare
    MemoryError; a key added later gets a bound too, or this fails."""
    from dvla.spec import _FIELD_TYPES, UPPER_BOUNDS

    counts = {f"{section}.{key}" for section, types in _FIELD_TYPES.items() for key, kind in types.items()
              if kind is int} - {"job.seed", "env.nice"}  # any 64-bit integer; 0-19, Linux's range
    assert counts <= set(UPPER_BOUNDS), sorted(counts - set(UPPER_BOUNDS))
    for key, (high, why) in UPPER_BOUNDS.items():
        section, name = key.split(".")
        data = {section: {name: int(high) + 1 if key in counts else high * 2}}
        with pytest.raises(SpecError) as refused:
            spec_from_dict(data)
        assert [str(i) for i in refused.value.issues] == [f"<job>: {key}: must be at most {high:,} ({why}), "
                                                         f"got {data[section][name]:,}"]
        try:  # the bound itself is within it (another rule may refuse it: 1024 GPUs for 2 env workers)
            spec_from_dict({section: {name: high}})
        except SpecError as err:
            assert not any("must be at most" in i.reason for i in err.issues), err


def test_integers_beyond_64_bits_are_refused_in_args_too():
    """TOML's integers are 64-bit, but tomllib reads any; dvlad refused the spec at submit (msgpack, SQLite)."""
    assert only("[policy.args]\nd_model = 99999999999999999999999\n").reason.startswith("must fit in 64 bits")
    assert only("[job]\nseed = -99999999999999999999999\n").key == "job.seed"


def test_sync_mode_accepts_any_max_staleness():
    spec = parse_spec('[job]\nmode = "sync"\n[pipeline]\nmax_staleness = 5\n')
    assert spec.job.mode == "sync" and spec.pipeline.max_staleness == 5


def test_grpo_group_must_fit_in_one_env_group():
    issue = only(
        """\
        [env]
        num_envs = 16
        groups = 2

        [algo]
        name = "grpo"
        group_size = 3
        [pipeline]
        segment_steps = 40
        """
    )
    assert (issue.key, issue.line) == ("algo.group_size", 7)
    assert "num_envs / groups = 16 / 2 = 8" in issue.reason
    issue = only('[env]\nnum_envs = 12\n[algo]\nname = "grpo"\n[pipeline]\nsegment_steps = 40\n')  # 8 ∤ 6
    assert (issue.key, issue.line) == ("env.num_envs", 2)


def test_grpo_needs_two_episodes_per_group_and_whole_episodes():
    issue = only('[algo]\nname = "grpo"\ngroup_size = 1\n')
    assert (issue.key, issue.line) == ("algo.group_size", 3)
    assert "at least 2" in issue.reason
    issue = only('[env]\nmax_episode_steps = 40\n[algo]\nname = "grpo"\n[pipeline]\nsegment_steps = 32\n')
    assert (issue.key, issue.line) == ("pipeline.segment_steps", 6)
    # the same numbers are fine for PPO, which bootstraps across segment ends
    parse_spec("[env]\nmax_episode_steps = 40\n[pipeline]\nsegment_steps = 32\n")


@pytest.mark.parametrize(("key", "written", "meant"), [("env", "raech", "reach"), ("policy", "tiny_vla", "tiny-vla")])
def test_unknown_built_in_names_are_refused_with_the_closest(key, written, meant):
    issue = only(f'[{key}]\nname = "{written}"\n')
    assert (issue.key, issue.line) == (f"{key}.name", 2)
    assert f'unknown {key} "{written}" (did you mean "{meant}"?)' in issue.reason
    assert "package.module:function" in issue.reason
    spec = parse_spec(f'[{key}]\nname = "{written}:make"\n')  # an entry point: only the job can import it
    assert getattr(spec, key).name == f"{written}:make"


def test_grpo_segments_hold_the_env_s_own_episode_limit_when_max_episode_steps_is_0():
    issue = only('[algo]\nname = "grpo"\n')  # the defaults: reach ends its episodes at 40 steps, segments 32
    assert (issue.key, issue.line) == ("algo.name", 2)
    assert "segment_steps (32) must be at least the episode limit of env \"reach\" (40)" in issue.reason
    parse_spec('[algo]\nname = "grpo"\n[pipeline]\nsegment_steps = 40\n')
    synthetic = '[env]\nname = "synthetic"\nnum_envs = 16\n[algo]\nname = "grpo"\n[pipeline]\nsegment_steps = 24\n'
    assert "(220)" in only(synthetic).reason
    parse_spec(synthetic.replace('"synthetic"\n', '"synthetic"\nargs = { max_episode_steps = 24 }\n'))
    libero = '[env]\nname = "libero"\n{}[algo]\nname = "grpo"\n[pipeline]\nsegment_steps = 220\n'
    parse_spec(libero.format(""))  # libero_spatial: 220
    issue = only(libero.format('args = { suite = "libero_goal" }\n'))
    assert (issue.key, "(300)" in issue.reason) == ("pipeline.segment_steps", True)
    parse_spec('[env]\nname = "mine.envs:make"\n[algo]\nname = "grpo"\n')  # a user env's limit is its own


def test_the_spec_knows_the_engines_built_in_names_and_episode_limits():
    """dvla.catalog is what the spec checks against; the engine's registries must say the same."""
    from dvlad.envs import ENV_FACTORIES, make_env
    from dvlad.envs.libero import MAX_EPISODE_STEPS
    from dvlad.policies import BUILTIN_POLICIES

    assert set(ENV_FACTORIES) == set(catalog.ENVS) and set(BUILTIN_POLICIES) == set(catalog.POLICIES)
    assert MAX_EPISODE_STEPS == catalog.LIBERO_SUITES
    for name, args in (("synthetic", {}), ("synthetic", {"max_episode_steps": 24}), ("reach", {"image_size": 16})):
        env = make_env(name, **args)
        try:
            assert env.spec.max_episode_steps == catalog.episode_limit(name, args), (name, args)
        finally:
            env.close()


def test_the_catalog_lists_exactly_the_arguments_of_each_built_ins_constructor():
    """[policy.args] and [env.args] are checked against dvla.catalog on a laptop without torch; the
    catalog must name what the engine's constructors really take, so the two cannot drift apart."""
    import inspect

    from dvla import catalog
    from dvlad.envs.libero import LiberoEnv
    from dvlad.envs.reach import ReachEnv
    from dvlad.envs.synthetic import SyntheticEnv
    from dvlad.policies import BUILTIN_POLICIES, _import_factory

    def arguments(cls, engine_given):
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # past self
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY for p in params), cls  # no **kw
        return [p.name for p in params if p.name not in engine_given]

    for name, target in BUILTIN_POLICIES.items():
        assert tuple(arguments(_import_factory(target), {"env_spec", "action_chunk"})) == catalog.POLICY_ARGS[name]
    envs = {"reach": ReachEnv, "synthetic": SyntheticEnv, "libero": LiberoEnv}
    assert set(envs) == set(catalog.ENVS) == set(catalog.ENV_ARGS)
    for name, cls in envs.items():
        assert tuple(arguments(cls, {"env_index"})) == catalog.ENV_ARGS[name], name


def test_a_misspelt_argument_of_a_built_in_is_refused_with_did_you_mean():
    issues = refuse('[policy]\nname = "transformer-vla"\n[policy.args]\npreset = "tiny"\npatchsize = 8\n'
                    '[env]\nname = "synthetic"\nargs = { step_msec = 2.0, cameras = ["image"] }\n')
    assert [(i.key, i.line, i.reason) for i in issues] == [
        ("policy.args.patchsize", 5, 'unknown argument of policy "transformer-vla" (did you mean '
                                     '"policy.args.patch_size"?)'),
        ("env.args.step_msec", 8, 'unknown argument of env "synthetic" (did you mean "env.args.step_ms"?)')]
    chunk, = refuse("[policy.args]\naction_chunk = 2\n")  # the engine passes it: a key of [policy]
    assert chunk.reason == ('unknown argument of policy "tiny-vla" (did you mean "policy.action_chunk", '
                            "a key of [policy]?)")
    other, = refuse("[env.args]\nzzz = 1\n")
    assert other.reason.endswith("; it takes: " + ", ".join(catalog.ENV_ARGS["reach"]))
    parse_spec('[policy]\nname = "mine.models:make"\n[policy.args]\nanything = 1\n')  # a user's: its own business
    spec_from_dict({"env": {"name": "libero", "args": {"suite": "libero_10", "task": 3}},
                    "policy": {"args": {"d_model": 32, "patch_grid": 4}}})


def test_every_issue_is_collected_in_file_order():
    issues = refuse(
        """\
        [algos]
        [env]
        num_envs = "many"
        workers = 0
        [algo]
        gamma = 2
        """
    )
    assert [(i.key, i.line) for i in issues] == [
        ("algos", 1),
        ("env.num_envs", 3),
        ("env.workers", 4),
        ("algo.gamma", 6),
    ]
    with pytest.raises(SpecError) as info:
        parse_spec("[algos]\n[env]\nnum_envs = 'x'\n", "job.toml")
    message = str(info.value).splitlines()
    assert message[0] == "job.toml: 2 problems in the job spec:"
    assert message[1].strip().startswith("job.toml:1:1: algos:")
    assert isinstance(info.value, ValueError)


# ---- valid files ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_gives_defaults(text):
    assert parse_spec(text) == JobSpec()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    spec = load_spec(path)
    assert spec.job.name


def test_examples_are_there():
    names = {p.name for p in EXAMPLES}
    assert {"reach_ppo.toml", "reach_grpo.toml", "synthetic_bench.toml"} <= names


def test_full_file_round_trips():
    spec = load_spec(ROOT / "examples" / "reach_grpo.toml")
    assert spec.algo.name == "grpo" and spec.algo.group_size == 8
    assert spec.pipeline.segment_steps == 40
    data = spec_to_dict(spec)
    assert set(data) == {f.name for f in dataclasses.fields(JobSpec)}
    assert spec_from_dict(json.loads(json.dumps(data))) == spec
    assert parse_spec(dump_toml(spec)) == spec
    spec = load_spec(ROOT / "examples" / "synthetic_bench.toml")
    assert parse_spec(dump_toml(spec)) == spec


def test_spec_from_dict_checks_without_lines():
    with pytest.raises(SpecError) as info:
        spec_from_dict({"env": {"num_envs": 16.0}})
    (issue,) = info.value.issues
    assert (issue.key, issue.line) == ("env.num_envs", None)
    assert str(issue) == "<job>: env.num_envs: expected an integer, got 16.0"


def test_missing_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.toml")
    (issue,) = info.value.issues
    assert issue.reason == "no such file" and issue.source.endswith("nope.toml")


def test_load_spec_reports_the_file_name(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[env]\nnum_envs = 15\n")
    with pytest.raises(SpecError, match=re.escape(f"{path}:2:1: env.num_envs: ")):
        load_spec(path)


def test_spec_error_survives_pickling():
    with pytest.raises(SpecError) as info:
        parse_spec("[env]\nnum_envs = 15\n")
    again = pickle.loads(pickle.dumps(info.value))
    assert again.issues == info.value.issues and str(again) == str(info.value)


# ---- the client stays light ----------------------------------------------------------------


def test_importing_the_spec_imports_no_torch():
    sdk_dir = Path(dvla.__file__).resolve().parent.parent
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import dvla.spec; "
        "heavy = [m for m in ('torch', 'numpy', 'dvlad') if m in sys.modules]; print(heavy)"
    )
    argv = [sys.executable, "-c", code, str(sdk_dir)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_docs_describe_every_key():
    docs = (ROOT / "docs" / "jobs.md").read_text()
    for section in spec_to_dict(JobSpec()):
        head = docs.index(f"## `[{section}]`")
        end = docs.find("\n## ", head + 1)
        body = docs[head : end if end > 0 else len(docs)]
        for key in spec_to_dict(JobSpec())[section]:
            assert f"| `{key}` |" in body, f"docs/jobs.md lacks {section}.{key}"


def test_docs_example_is_valid_and_matches_the_example_file():
    docs = (ROOT / "docs" / "jobs.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", docs, flags=re.S)
    assert block == (ROOT / "examples" / "reach_ppo.toml").read_text()  # word for word, comments included
    assert parse_spec(block) == load_spec(ROOT / "examples" / "reach_ppo.toml")
