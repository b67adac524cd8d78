"""LIBERO behind D-VLA's env protocol: the five suites, their fixed starts, LIBERO's own success.

Why these choices:
- **One env, one task, built once.** Building a LIBERO env (parsing its BDDL problem, compiling
  the MuJoCo model, opening a GL context) takes 5–15 s; a reset must not. An env is built for
  one task and reset *softly* (``hard_reset=False``: the model and renderer are kept, the state
  is overwritten with a fixed start), so a worker builds each of its envs once per job and
  reuses it for every episode. A job spreads a suite (or a list of tasks) over its envs: env
  ``i`` serves ``tasks[env_index % len(tasks)]`` (``env_index`` comes from the worker pool).
  Evaluation (:mod:`dvlad.runtime.evaluate`) moves an env from task to task with
  :meth:`LiberoEnv.set_task`, which rebuilds only when the task changes.
- **Fixed starts.** Each task ships 50 init states (full MuJoCo states). ``reset(init_state=i)``
  replays start ``i``; ``reset(seed=s)`` picks one deterministically from the seed (equal seeds,
  equal starts), so GRPO can replay a start across a group.
- **Settle steps.** Objects of an init state drop a few millimetres onto the table; the custom
  (OpenVLA, openpi) is to step a no-op action (zero motion, gripper open = −1) 10 times after a
  reset before the policy acts. They are not counted in the episode; cameras are not rendered
  during them.
- **Images are turned once, here.** LIBERO (robosuite, OpenGL convention) renders upside down.
  Every image is rotated by 180° (both axes flipped, ``img[::-1, ::-1]``), the orientation the
  published LIBERO VLA checkpoints were trained on: the robot stands at the top of the
  agentview image. Nothing downstream flips again.
- **Only the frames a policy sees.** Inside an action chunk the worker steps every action but
  the last with ``render=False``: the physics runs as before and the cameras are not rendered
  (:class:`_FrameGate`). robosuite samples a camera at the first physics substep of a control
  step, so the chunk's last frame is exactly the one rendering every step gave. A step that ends
  the episode by its time limit is known in advance and rendered the same way; one that succeeds
  inside a chunk is rendered after the step, at the state it ended in (a terminal frame, which no
  learner reads).
- **Cheap frames on a CPU renderer.** With OSMesa, shadows, reflections and 4× multisampling
  make a step 2–3× dearer for no information a policy needs, so ``fast_render`` (default: on
  with OSMesa, off with EGL, where frames must look like LIBERO's demonstrations) turns them off.

Observation: cameras ``agentview`` (third person) and ``wrist`` (robosuite's
``robot0_eye_in_hand``), uint8 H×W×3 of ``image_size`` (default 128, or e.g. 224, 256: the
GL buffers are made of the image size), or none with ``cameras=False`` (physics only, for benchmarks).
Proprio (8 float32): end-effector position (3, metres, robot base frame as robosuite reports it),
end-effector orientation as **axis-angle** (3, radians; from robosuite's xyzw quaternion, the
state layout of the published LIBERO VLA fine-tunes), gripper finger joint positions (2).
Action (7 floats in [−1, 1]), LIBERO's OSC_POSE controller: delta position (scaled to ±5 cm per
step), delta rotation (axis-angle, ±0.5 rad per step), gripper (−1 open … +1 closed).
Reward 1 on success, else 0; success is LIBERO's BDDL goal predicate (``check_success``), and it
terminates the episode.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from dvla.catalog import DEFAULT_LIBERO_SUITE, LIBERO_SUITES
from dvlad.envs.base import Observation, StepResult, start_rng
from dvlad.envs.gl import SharedGLContext
from dvlad.envs.libero_config import prepare_libero
from dvlad.spaces import ACTION_DIM, EnvSpec

MAX_EPISODE_STEPS: dict[str, int] = LIBERO_SUITES
"""The suites and their customary episode limits (policy steps, settle steps not counted); defined
in :mod:`dvla.catalog`, so that ``dvla validate`` knows them without LIBERO."""

CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
"""D-VLA camera name -> robosuite camera name."""

SETTLE_STEPS = 10
NOOP = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
NOOP.setflags(write=False)
"""No motion, gripper open: the action of the settle steps."""
INIT_STATE_TAG = 0x11BE20
PROPRIO_DIM = 8


class _FrameGate:
    """A camera observable's sensor that renders only while a frame is wanted, and otherwise hands
    back the last one (which the step's caller does not read). Installed once per camera, so the
    observable's sampling timers run exactly as robosuite's own."""

    def __init__(self, sensor: Callable[[dict], np.ndarray]) -> None:
        self.sensor = sensor
        self.__modality__ = sensor.__modality__  # robosuite checks a sensor's modality
        self.wanted = True
        self.last: np.ndarray | None = None
        self.renders = 0
        """Frames rendered since the env was built (tests count them)."""

    def __call__(self, obs_cache: dict) -> np.ndarray:
        if self.wanted or self.last is None:
            self.last = self.sensor(obs_cache)
            self.renders += 1
        return self.last


@dataclass(frozen=True)
class Task:
    index: int
    name: str
    instruction: str
    bddl_file: str


@cache
def _benchmark(suite: str) -> Any:
    if suite not in MAX_EPISODE_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(MAX_EPISODE_STEPS)}")
    prepare_libero()
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the task order on construction
        return benchmark.get_benchmark_dict()[suite]()


def suite_tasks(suite: str) -> list[Task]:
    """The suite's tasks in LIBERO's order (``benchmark.get_task(i)``, task order 0)."""
    bench = _benchmark(suite)
    return [Task(i, t.name, t.language, bench.get_task_bddl_file_path(i)) for i, t in enumerate(bench.tasks)]


def resolve_task(suite: str, task: int | str) -> Task:
    """A task of ``suite`` by index or by name (LIBERO's task name, or its instruction)."""
    tasks = suite_tasks(suite)
    if isinstance(task, int) and not isinstance(task, bool):
        if 0 <= task < len(tasks):
            return tasks[task]
    elif isinstance(task, str):
        for t in tasks:
            if task in (t.name, t.instruction):
                return t
    listing = "\n".join(f"  {t.index}: {t.name}" for t in tasks)
    raise ValueError(f"no task {task!r} in {suite}; give an index 0..{len(tasks) - 1} or a name:\n{listing}")


def served_task(suite: str, task: int | str | None = None, tasks: Sequence[int | str] | None = None,
                env_index: int = 0) -> Task:
    """The task an env serves: ``task`` if given, else ``tasks[env_index % len(tasks)]``, where
    ``tasks`` defaults to the whole suite (so a job's envs spread over it)."""
    if task is not None and tasks is not None:
        raise ValueError("give either task (one task) or tasks (spread over the job's envs), not both")
    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a list of task indices or names, got the string {tasks!r}")
    if task is None:
        served = list(tasks) if tasks is not None else list(range(len(suite_tasks(suite))))
        if not served:
            raise ValueError("tasks must name at least one task")
        task = served[env_index % len(served)]
    return resolve_task(suite, task)


def _init_states(suite: str, index: int) -> np.ndarray:
    return np.asarray(_benchmark(suite).get_task_init_states(index))


class LiberoEnv:
    """One LIBERO task of one suite (see the module docstring).

    ``task``: one task (index or name). Otherwise ``tasks`` (default: the whole suite) and this
    env serves ``tasks[env_index % len(tasks)]``. ``max_episode_steps`` 0 or None: the suite's
    limit. ``libero_root``: a LIBERO data root of your own (see :mod:`dvlad.envs.libero_config`).
    """

    renders_on_demand = True
    """:meth:`step` takes ``render=False`` (the frames inside an action chunk, which no policy sees)."""

    def __init__(
        self,
        suite: str = DEFAULT_LIBERO_SUITE,
        task: int | str | None = None,
        tasks: Sequence[int | str] | None = None,
        env_index: int = 0,
        image_size: int = 128,
        cameras: Sequence[str] | bool = ("agentview", "wrist"),
        max_episode_steps: int | None = None,
        settle_steps: int = SETTLE_STEPS,
        fast_render: bool | None = None,
        libero_root: str | None = None,
        seed: int | None = None,
    ) -> None:
        prepare_libero(libero_root)
        first = served_task(suite, task, tasks, env_index)
        if cameras is True:
            cameras = tuple(CAMERAS)
        cameras = list(cameras or [])
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown LIBERO camera(s) {unknown}; valid cameras: {', '.join(CAMERAS)}")
        if fast_render is None:
            fast_render = os.environ.get("MUJOCO_GL") == "osmesa"
        self.suite, self.image_size, self.cameras = suite, image_size, cameras
        self.settle_steps, self.fast_render = settle_steps, fast_render
        self.spec = EnvSpec(
            cameras={c: (image_size, image_size) for c in cameras},
            proprio_dim=PROPRIO_DIM,
            max_episode_steps=max_episode_steps or MAX_EPISODE_STEPS[suite],
            num_init_states=0,
        )
        self._rng = np.random.default_rng(seed)
        self._env: Any = None
        self._gates: dict[str, _FrameGate] = {}
        """robosuite camera observable name -> its gate (:class:`_FrameGate`)."""
        self.task: Task | None = None
        self.init_state: int | None = None
        """The fixed start the current episode began from."""
        self.episode_steps = 0
        self.set_task(first.index)

    @property
    def libero(self) -> Any:
        """The underlying LIBERO ``ControlEnv`` (its ``.env`` is the robosuite env, ``.sim`` the MuJoCo sim)."""
        return self._env

    def set_task(self, task: int | str) -> None:
        """Serve ``task`` of this env's suite, rebuilding the simulator only if the task changes."""
        resolved = resolve_task(self.suite, task)
        if self.task is not None and resolved.index == self.task.index:
            return
        if self._env is not None:
            self._env.close()
            self._env = None
        from libero.libero.envs.env_wrapper import ControlEnv

        self._env = ControlEnv(
            bddl_file_name=resolved.bddl_file,
            camera_names=[CAMERAS[c] for c in self.cameras] or ["agentview"],
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            use_camera_obs=bool(self.cameras),
            has_offscreen_renderer=bool(self.cameras),
            hard_reset=False,  # keep model and renderer across episodes: a reset costs ms, not seconds
            ignore_done=True,  # episode limits are D-VLA's (robosuite's horizon would end episodes itself)
        )
        self.task = resolved
        self._gates = {}
        for c in self.cameras:
            name = f"{CAMERAS[c]}_image"
            # robosuite 1.4.0 (pinned) has no getter for an observable's sensor; the pixel-identity
            # tests (tests/test_libero.py) catch a robosuite whose sensors work otherwise
            gate = self._gates[name] = _FrameGate(self._env.env._observables[name]._sensor)
            self._env.env.modify_observable(name, "sensor", gate)
        self._init = _init_states(self.suite, resolved.index)
        self.spec = EnvSpec(self.spec.cameras, PROPRIO_DIM, self.spec.max_episode_steps, len(self._init))
        if self.cameras:
            self._fit_gl_buffers()

    def _fit_gl_buffers(self) -> None:
        """GL buffers for the frames this env renders, nothing more, remade in this process's one
        GL context (:class:`~dvlad.envs.gl.SharedGLContext`; MuJoCo sizes them when its context is
        made). Same pixels: the offscreen buffer of the image size instead of
        robosuite's 640×480 (frames are drawn in a viewport of the image size at its corner either
        way), and no shadow map where no light casts shadows (LIBERO's scenes: ``castshadow="false"``,
        and MuJoCo's headlight never does). With ``fast_render``, also shadows, reflections and
        multisampling off (a CPU renderer's three most expensive passes; other pixels)."""
        import mujoco

        sim = self._env.sim
        context = sim._render_context_offscreen
        vis = sim.model.vis
        vis.global_.offwidth = vis.global_.offheight = self.image_size
        if not sim.model.light_castshadow.any():
            vis.quality.shadowsize = 0
        if self.fast_render:
            context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            vis.quality.offsamples = 0
        context.gl_ctx.make_current()
        context.con.free()  # MuJoCo's objects, freed in the context they were made in
        context.gl_ctx = SharedGLContext.adopt(context)  # one GL context for all of the worker's envs
        context.gl_ctx.make_current()
        context._set_mujoco_context_and_buffers()

    def _make_current(self) -> None:
        """Bind this env's GL context: with several envs in one process the last one built is current."""
        if self.cameras:
            self._env.sim._render_context_offscreen.gl_ctx.make_current()

    def _set_cameras(self, enabled: bool) -> None:
        for c in self.cameras:
            self._env.env.modify_observable(f"{CAMERAS[c]}_image", "enabled", enabled)

    # -- protocol -----------------------------------------------------------------------
    def reset(self, seed: int | None = None, init_state: int | None = None) -> Observation:
        """Restore one of the task's fixed starts, settle, observe. ``init_state`` wins over ``seed``."""
        count = len(self._init)
        rng = start_rng(seed, init_state, num_init_states=count, tag=INIT_STATE_TAG, fallback=self._rng)
        index = init_state if init_state is not None else int(rng.integers(count))
        self._make_current()
        for gate in self._gates.values():
            gate.wanted = True
        self._set_cameras(False)  # no frames for the reset and settle steps: only the last one is seen
        # Fixtures (cabinets, stoves) are placed by sampling from np.random at every reset and their
        # placement is model data, not part of the saved init state: seeding it by the start index
        # makes a start replay exactly, fixtures included.
        self._env.seed(index)
        self._env.reset()
        for robot in self._env.robots:  # the gripper's command ramp outlives a soft reset; a fresh env starts at 0
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self._env.set_init_state(self._init[index])
        for _ in range(self.settle_steps):
            self._env.step(NOOP)
        self._set_cameras(True)
        raw = self._env.regenerate_obs_from_state(self._env.get_sim_state())
        self.init_state = index
        self.episode_steps = 0
        return self._observe(raw)

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        """One control step. ``render=False``: the caller reads no image of this step's observation
        unless the episode ends on it (see the module docstring), so the cameras are not rendered."""
        a = np.clip(np.nan_to_num(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM)), -1.0, 1.0)
        self._make_current()
        wanted = render or self.episode_steps + 1 >= self.spec.max_episode_steps  # its last step: a frame
        for gate in self._gates.values():
            gate.wanted = wanted
        raw, _, done, _ = self._env.step(a)
        self.episode_steps += 1
        success = bool(done)
        if success and not wanted:  # ended inside a chunk: its final frame, of the state it ended in
            raw = {**raw, **{name: gate.sensor({}) for name, gate in self._gates.items()}}
        return StepResult(
            obs=self._observe(raw),
            reward=float(success),
            terminated=success,
            truncated=not success and self.episode_steps >= self.spec.max_episode_steps,
            success=success,
        )

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _observe(self, raw: dict[str, np.ndarray]) -> Observation:
        from robosuite.utils.transform_utils import quat2axisangle

        images = {c: np.ascontiguousarray(raw[f"{CAMERAS[c]}_image"][::-1, ::-1]) for c in self.cameras}
        proprio = np.concatenate([
            raw["robot0_eef_pos"],
            quat2axisangle(np.array(raw["robot0_eef_quat"], dtype=np.float64)),
            raw["robot0_gripper_qpos"],
        ]).astype(np.float32)
        assert self.task is not None
        return Observation(images=images, proprio=proprio, instruction=self.task.instruction)
