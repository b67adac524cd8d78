"""LIBERO through D-VLA's env protocol, on the real package with its real assets (OSMesa here).

Envs are expensive to build (5–15 s each), so one env per suite is built once for the module
and shared; each is built differently (image sizes 64 to 256, physics only) to cover the options.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from dvla.spec import JobSpec
from dvlad.envs import make_env
from dvlad.envs.base import Env
from dvlad.envs.libero import CAMERAS, MAX_EPISODE_STEPS, NOOP, resolve_task, served_task, suite_tasks
from dvlad.envs.libero_config import LiberoSetupError, data_root, prepare_libero
from dvlad.lanes.env_workers import EnvWorkerPool, decode_instruction
from dvlad.spaces import MAX_INSTRUCTION_BYTES

BUILDS = {  # suite -> (task, env args): every suite once, each option somewhere
    "libero_spatial": (0, {}),  # defaults: 128², both cameras, the suite's limit
    "libero_object": (2, {"image_size": 224, "max_episode_steps": 6}),
    "libero_goal": (1, {"image_size": 256, "cameras": ["agentview"]}),
    "libero_10": (3, {"image_size": 64, "cameras": ["wrist"]}),
    "libero_90": (5, {"cameras": False, "max_episode_steps": 10}),
}


@pytest.fixture(scope="module")
def envs():
    built = {suite: make_env("libero", suite=suite, task=task, **args) for suite, (task, args) in BUILDS.items()}
    yield built
    for env in built.values():
        env.close()


def libero_benchmark(suite: str):
    """LIBERO's own task list, to check D-VLA against."""
    prepare_libero()
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite]()


def test_suites_limits_and_task_lists():
    assert MAX_EPISODE_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                                 "libero_10": 520, "libero_90": 400}
    for suite in MAX_EPISODE_STEPS:
        tasks, bench = suite_tasks(suite), libero_benchmark(suite)
        assert len(tasks) == (90 if suite == "libero_90" else 10)
        assert [t.instruction for t in tasks] == [bench.get_task(i).language for i in range(len(tasks))]
        assert max(len(t.instruction.encode()) for t in tasks) <= MAX_INSTRUCTION_BYTES  # fits a slot whole
    last = suite_tasks("libero_goal")[-1]
    assert resolve_task("libero_goal", last.name) == resolve_task("libero_goal", last.instruction) == last


def test_bad_names_are_refused_listing_the_valid_ones():
    with pytest.raises(ValueError, match="valid suites: libero_spatial, libero_object"):
        suite_tasks("libero_100")
    with pytest.raises(ValueError, match=r"(?s)no task 'open the door'.*0\.\.9.*0: open_the_middle_drawer"):
        resolve_task("libero_goal", "open the door")
    with pytest.raises(ValueError, match="no task 10"):
        resolve_task("libero_goal", 10)
    with pytest.raises(ValueError, match="valid cameras: agentview, wrist"):
        make_env("libero", suite="libero_goal", cameras=["frontview"])
    with pytest.raises(ValueError, match="not both"):
        served_task("libero_goal", task=1, tasks=[1, 2])


def test_envs_spread_over_tasks_by_index():
    names = [t.name for t in suite_tasks("libero_object")]
    assert [served_task("libero_object", env_index=i).index for i in (0, 1, 9, 10, 13)] == [0, 1, 9, 0, 3]
    assert [served_task("libero_object", tasks=[4, names[7]], env_index=i).index for i in range(3)] == [4, 7, 4]


def test_config_is_written_before_libero_is_imported(tmp_path):
    root = prepare_libero()
    config = Path(os.environ["LIBERO_CONFIG_PATH"]) / "config.yaml"
    text = config.read_text()
    for key in ("benchmark_root", "bddl_files", "init_states", "datasets", "assets"):
        assert f"{key}:" in text
    assert str(root / "init_files") in text
    import libero.libero
    import robosuite.macros

    assert (Path(libero.libero.get_assets_path()) / "scenes").is_dir()  # the asset packages, no download
    assert robosuite.macros.FILE_LOGGING_LEVEL is None  # no shared /tmp/robosuite.log
    with pytest.raises(LiberoSetupError, match="lacks bddl_files/, init_files/"):
        data_root(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("suite", list(BUILDS))
def test_each_suite_builds_resets_to_an_init_state_and_steps(envs, suite):
    env, (task, args) = envs[suite], BUILDS[suite]
    assert isinstance(env, Env)
    cameras = args.get("cameras", list(CAMERAS)) or []
    size = args.get("image_size", 128)
    assert env.spec.cameras == {c: (size, size) for c in cameras}
    assert env.spec.num_init_states == 50 and env.spec.proprio_dim == 8
    assert env.spec.max_episode_steps == args.get("max_episode_steps", MAX_EPISODE_STEPS[suite])
    obs = env.reset(init_state=7)
    assert env.init_state == 7
    assert obs.instruction == libero_benchmark(suite).get_task(task).language
    for name in cameras:
        image = obs.images[name]
        assert image.shape == (size, size, 3) and image.dtype == np.uint8 and image.std() > 10
    assert obs.proprio.dtype == np.float32 and np.isfinite(obs.proprio).all()
    result = env.step(np.array([0.5, 0, 0, 0, 0, 0, -1]))
    assert not result.terminated and not result.truncated and result.reward == 0.0
    assert result.obs.proprio[0] != obs.proprio[0]  # the end effector moved along x


@pytest.mark.slow
def test_images_are_rendered_frames_turned_by_180_degrees(envs):
    env = envs["libero_spatial"]
    first = env.reset(init_state=0)
    for other in ("libero_goal", "libero_10"):  # other envs of the process render in between (own GL contexts)
        envs[other].reset(init_state=0)
        envs[other].step(NOOP)
    obs = env.reset(init_state=0)
    envs["libero_10"].step(NOOP)
    env.libero.sim._render_context_offscreen.gl_ctx.make_current()  # the reference: drawn in its own context
    for name, camera in CAMERAS.items():
        raw = env.libero.sim.render(camera_name=camera, width=128, height=128)  # robosuite: upside down
        np.testing.assert_array_equal(obs.images[name], raw[::-1, ::-1])
        np.testing.assert_array_equal(obs.images[name], first.images[name])


@pytest.mark.slow
def test_a_start_replays_exactly(envs):
    env = envs["libero_spatial"]
    first = env.reset(init_state=3)
    state = env.libero.get_sim_state().copy()
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, 7))
    again = env.reset(init_state=3)
    np.testing.assert_array_equal(env.libero.get_sim_state(), state)
    np.testing.assert_array_equal(again.images["agentview"], first.images["agentview"])
    np.testing.assert_array_equal(again.proprio, first.proprio)
    starts = []
    for seed in (11, 11, 12, 13, 14):
        env.reset(seed=seed)
        starts.append(env.init_state)
    assert starts[0] == starts[1] and len(set(starts)) > 1  # equal seeds, equal starts; seeds spread
    env.reset(init_state=4)
    assert not np.array_equal(env.libero.get_sim_state(), state)


def _renders(env) -> list[int]:
    """Frames each camera of ``env`` has rendered so far."""
    return [gate.renders for gate in env._gates.values()]


@pytest.mark.slow
def test_a_chunk_renders_its_last_frame_only_and_it_is_the_frame_every_step_rendered(envs):
    """Inside an action chunk the worker steps with ``render=False`` but at the chunk's end: the
    physics is the same, the cameras render once, and the final frames equal those of rendering
    every step bit for bit (robosuite samples a camera at a control step's first substep)."""
    env = envs["libero_spatial"]
    chunk = np.random.default_rng(1).uniform(-1, 1, (4, 7))
    env.reset(init_state=5)
    before = _renders(env)
    every = [env.step(a) for a in chunk][-1]
    assert [n - b for n, b in zip(_renders(env), before, strict=True)] == [4, 4]
    env.reset(init_state=5)
    before = _renders(env)
    last = [env.step(a, render=k == 3) for k, a in enumerate(chunk)][-1]
    assert [n - b for n, b in zip(_renders(env), before, strict=True)] == [1, 1]
    for name in CAMERAS:
        np.testing.assert_array_equal(last.obs.images[name], every.obs.images[name])
    np.testing.assert_array_equal(last.obs.proprio, every.obs.proprio)


@pytest.mark.slow
def test_a_worker_steps_a_chunk_with_one_frame_per_camera_and_writes_the_same_slot(envs):
    """The worker's side (``_EnvSlots.step``, in this process): a chunk of 4 renders each camera
    once, and the slot holds what rendering every step gave."""
    from dvlad.lanes.env_workers import CMD_STEP, WorkerConfig, _EnvSlots, slot_layout
    from dvlad.shm import SharedArrays

    env = envs["libero_spatial"]
    chunk = np.random.default_rng(2).uniform(-1, 1, (4, 7))
    env.reset(init_state=6)
    expected = [env.step(a) for a in chunk][-1].obs
    arrays = SharedArrays(slot_layout(env.spec, 1, 4))
    try:
        slots = _EnvSlots(WorkerConfig(0, "libero", {}, ((0,),), auto_reset=True, base_seed=0), arrays, {0: env})
        env.reset(init_state=6)
        arrays["command"][0], arrays["action"][0] = CMD_STEP, chunk
        before = _renders(env)
        assert slots.step(0) == 4
        assert [n - b for n, b in zip(_renders(env), before, strict=True)] == [1, 1]
        for name in CAMERAS:
            np.testing.assert_array_equal(arrays[f"image/{name}"][0], expected.images[name])
    finally:
        arrays.unlink()


@pytest.mark.slow
def test_a_process_renders_every_env_in_one_gl_context_with_robosuites_own_pixels(envs):
    """All LIBERO envs of a process (a worker's) draw in one GL context, each into buffers of its
    image size; their frames are robosuite's own, drawn by a simulator in a context of its own with
    robosuite's 640×480 buffers, bit for bit (LIBERO's own frames: shadows, reflection, 4× MSAA)."""
    from libero.libero.envs.env_wrapper import ControlEnv

    from dvlad.envs.gl import SharedGLContext

    env = make_env("libero", suite="libero_spatial", task=0, fast_render=False)
    reference = ControlEnv(bddl_file_name=env.task.bddl_file, camera_names=list(CAMERAS.values()),
                           camera_heights=128, camera_widths=128, hard_reset=False, ignore_done=True)
    try:
        cameras = [e for e in [*envs.values(), env] if e.cameras]
        contexts = {id(e.libero.sim._render_context_offscreen.gl_ctx.context) for e in cameras}
        assert len(contexts) == 1 and SharedGLContext._refs == len(cameras)
        own = reference.env.sim._render_context_offscreen.gl_ctx
        assert not isinstance(own, SharedGLContext) and id(own) not in contexts
        for start in (0, 9):
            obs = env.reset(init_state=start)
            reference.seed(start)  # fixtures are placed at reset from the seed, as LiberoEnv.reset does
            reference.reset()
            reference.set_init_state(env.libero.get_sim_state())
            reference.env.sim.forward()
            own.make_current()
            for name, camera in CAMERAS.items():
                frame = reference.env.sim.render(camera_name=camera, width=128, height=128)
                np.testing.assert_array_equal(obs.images[name], frame[::-1, ::-1])
    finally:
        env.close()
        reference.close()


@pytest.mark.slow
def test_the_step_that_ends_an_episode_by_its_limit_renders_inside_a_chunk(envs):
    env = envs["libero_object"]  # limit 6
    env.reset(init_state=0)
    before = _renders(env)
    results = [env.step(NOOP, render=False) for _ in range(6)]
    assert results[-1].truncated and [n - b for n, b in zip(_renders(env), before, strict=True)] == [1, 1]


@pytest.mark.slow
def test_noop_episode_ends_unsuccessful_at_the_limit(envs):
    env = envs["libero_object"]  # limit 6 configured, for speed; the suite's own is 280
    env.reset(seed=0)
    results = [env.step(NOOP) for _ in range(6)]
    assert [r.truncated for r in results] == [False] * 5 + [True]
    assert not any(r.success or r.terminated or r.reward for r in results)


@pytest.mark.slow
def test_success_comes_from_libero_predicate(envs):
    """Put the bowl on the plate by setting the simulator state: LIBERO says success, through D-VLA."""
    env = envs["libero_spatial"]
    env.reset(init_state=0)
    inner = env.libero.env
    assert inner.parsed_problem["goal_state"] == [["on", "akita_black_bowl_1", "plate_1"]]
    assert not any(env.step(NOOP).success for _ in range(3))
    plate = inner.sim.data.body_xpos[inner.obj_body_id["plate_1"]].copy()
    bowl_joint = inner.objects_dict["akita_black_bowl_1"].joints[-1]
    above_plate = plate + np.array([0.0, 0.0, 0.05])
    inner.sim.data.set_joint_qpos(bowl_joint, np.concatenate([above_plate, [1.0, 0.0, 0.0, 0.0]]))
    inner.sim.forward()
    for _ in range(30):  # the bowl drops onto the plate
        result = env.step(NOOP)
        if result.terminated:
            break
    assert result.success and result.terminated and not result.truncated and result.reward == 1.0
    assert env.libero.check_success()


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_batch_goes_on():
    args = {"suite": "libero_spatial", "tasks": [0, 1], "image_size": 32}
    pool = EnvWorkerPool("libero", args, num_envs=2, groups=1, workers=2, action_chunk=1, seed=0, step_timeout_s=60)
    try:
        assert pool.spec.max_episode_steps == 220  # the suite's limit by default
        tasks = suite_tasks("libero_spatial")
        assert [decode_instruction(row) for row in pool.read(0).instruction] == [tasks[0].instruction,
                                                                                tasks[1].instruction]
        noop = np.broadcast_to(NOOP, (2, 1, len(NOOP)))
        pool.step(0, noop)
        assert pool.wait(0).env_steps == 2
        victim = pool.workers[1].process.pid
        os.kill(victim, signal.SIGKILL)
        pool.step(0, noop)
        result = pool.wait(0)
        assert result.dropped_envs == [1] and pool.replaced_workers == 1 and victim not in pool.pids()
        assert decode_instruction(pool.read(0).instruction[1]) == tasks[1].instruction  # rebuilt, same task
        for _ in range(2):
            pool.step(0, noop)
            assert pool.wait(0).env_steps == 2
    finally:
        pool.close()


@pytest.mark.slow
def test_tiny_vla_trains_on_a_libero_task_and_is_evaluated(tmp_path, capsys):
    """The plumbing a pretrained VLA would use: async lanes on LIBERO, metrics, checkpoint, evaluation."""
    from dvlad.runtime.evaluate import main as evaluate_main
    from dvlad.runtime.job import run_job
    from dvlad.runtime.metrics import read_jsonl

    spec = JobSpec()
    spec.env.name = "libero"
    spec.env.args = {"suite": "libero_goal", "tasks": [4], "image_size": 32}
    spec.env.num_envs, spec.env.groups, spec.env.workers = 2, 1, 2
    spec.policy.args = {"d_model": 16, "layers": 1, "heads": 2, "patch_grid": 2}
    spec.algo.update_epochs, spec.algo.minibatches = 1, 2
    spec.pipeline.segment_steps = 8
    spec.train.total_env_steps = 32
    spec.train.resume = False
    summary = run_job(spec, tmp_path, quiet=True)
    assert summary["status"] == "succeeded" and summary["env_steps"] >= 32
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) >= 2 and rows[-1]["version"] >= 2
    assert (tmp_path / "checkpoint.safetensors").is_file()

    assert evaluate_main([str(tmp_path), "--episodes", "1", "--max-episode-steps", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["suite"] == "libero_goal" and [t["task"] for t in report["tasks"]] == [4]
    assert report["tasks"][0]["episodes"] == 1


def _untrained_checkpoint(run: Path, policy: str, policy_args: dict) -> JobSpec:
    """A run directory holding a random (untrained) LIBERO policy in the training checkpoint format:
    libero_spatial tasks 0 and 1, 32² images, chunks of 2 actions."""
    import torch

    from dvlad.policies import build_policy
    from dvlad.policies.checkpoint import save_training_checkpoint
    from dvlad.spaces import EnvSpec

    spec = JobSpec()
    spec.env.name, spec.env.args = "libero", {"suite": "libero_spatial", "tasks": [0, 1], "image_size": 32}
    spec.policy.name, spec.policy.args, spec.policy.action_chunk = policy, policy_args, 2
    env_spec = EnvSpec(cameras={c: (32, 32) for c in CAMERAS}, proprio_dim=8, max_episode_steps=220,
                       num_init_states=50)
    torch.manual_seed(0)
    _, flat = build_policy(spec, env_spec)
    flat.copy_(torch.randn_like(flat) * 0.5)  # far from the initialisation: actions that differ by start
    save_training_checkpoint(run / "checkpoint.safetensors", flat, {"state": {}}, version=0, trained_env_steps=0,
                             spec=spec)
    return spec


@pytest.mark.slow
@pytest.mark.timeout(900)  # five LIBERO env builds, 10-20 s each, more on a busy machine
def test_parallel_evaluation_gives_the_serial_episodes(tmp_path, capsys):
    """Three tasks' fixed starts over 2 workers and 2 envs, envs switching tasks, give every start the
    episode one env gives it alone (greedy, fixed starts), in start order, with per-task results."""
    from dvlad.runtime.evaluate import main as evaluate_main

    _untrained_checkpoint(tmp_path, "tiny-vla", {"d_model": 16, "layers": 1, "heads": 2, "patch_grid": 2})
    common = [str(tmp_path), "--tasks", "0", "1", "2", "--episodes", "2", "--max-episode-steps", "12",
              "--device", "cpu", "--no-progress", "--json"]
    runs = {}
    for workers, envs in ((1, 1), (2, 2)):  # one env walks the 3 tasks; 2 envs serve tasks 0, 1, then both take 2
        assert evaluate_main([*common, "--workers", str(workers), "--envs", str(envs)]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        runs[workers, envs] = json.loads(out[-1])
        assert out[-3].startswith("libero_spatial: success ")
        assert "from init states 0..1 of each of 3 task(s)" in out[-3]
    serial = runs[1, 1]
    assert [(e["task"], e["start"]) for e in serial["per_episode"]] == [(t, i) for t in (0, 1, 2) for i in (0, 1)]
    assert [t["task"] for t in serial["tasks"]] == [0, 1, 2] and all(t["episodes"] == 2 for t in serial["tasks"])
    ends = [tuple(e["final_proprio"]) for e in serial["per_episode"]]
    assert len(set(ends)) == 6  # the starts (and the tasks) differ, so a mixed-up start would show
    parallel = runs[2, 2]
    assert parallel["per_episode"] == serial["per_episode"]
    assert parallel["tasks"] == serial["tasks"] and (parallel["workers"], parallel["envs"]) == (2, 2)


def test_evaluate_refuses_what_is_not_a_d_vla_checkpoint_in_one_line(tmp_path):
    import subprocess
    import sys

    import torch

    from dvlad.policies.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "bare.safetensors", {"policy.flat": torch.zeros(3)}, {"version": "1"})
    (tmp_path / "text.safetensors").write_text("not a checkpoint")
    (tmp_path / "empty-run").mkdir()
    for given, reason in ((tmp_path / "missing", "no such checkpoint file"),
                          (tmp_path / "empty-run", "no such checkpoint file in the directory"),
                          (tmp_path / "text.safetensors", "not a safetensors file"),
                          (tmp_path / "bare.safetensors", "has no D-VLA job spec in its metadata")):
        out = subprocess.run([sys.executable, "-m", "dvlad.runtime.evaluate", str(given)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        line, = out.stderr.splitlines()
        assert reason in line and str(given) in line, line
