"""The embedded default task: touch the cube of the named colour.

Why this task: the engine needs a real MuJoCo env that installs with ``pip install
mujoco`` alone (no asset files, no LIBERO) and that a small CNN+transformer policy
learns from pixels and language with PPO in minutes on two CPU cores. So the scene
is a few primitives: a grey table, a white gripper on three slide joints, and a
few cubes in saturated colours; the instruction names one colour, and only
grounding that colour in the image tells the policy where to go.

Action (7 floats in [-1, 1]): dims 0..2 move the gripper's position target by up
to ``max_delta`` metres each; dims 3..5 (rotation) are ignored, as the gripper
cannot rotate, so one policy head still fits LIBERO; dim 6 closes the fingers
(−1 open … +1 closed), which is cosmetic and shows up in proprio only.

Proprio (4 float32): gripper tip x, y, z and finger opening, each scaled to [-1, 1]
over its range of motion (x, y over ±``GRIPPER_XY_LIMIT``, z over ``Z_MIN``…``Z_MAX``,
fingers closed … open). Why scaled: in metres these are ~0.1, and an input that small
moves a freshly initialised network ten times slower than the pixels beside it.

Auxiliary labels (``EnvSpec.aux_dim`` = 2): where the named cube's centre is in the image,
x right and y down, each in [-1, 1] over the image's width and height. The policy never
sees them; an auxiliary loss may train on them (``algo.aux_coef``), which grounds the
colour in the image far sooner than the policy gradient alone does (docs/learning.md).

Rendering is one 64×64 camera with shadows and multisampling off (each would double
OSMesa's cost), so a frame takes about 0.4–0.6 ms on one CPU core; the renderer is
warmed in the constructor because the first frame pays for context and texture setup.
"""

from __future__ import annotations

import numpy as np

from dvla.catalog import EPISODE_LIMITS
from dvlad.envs.base import Observation, StepResult, start_rng
from dvlad.envs.gl import configure_mujoco_gl
from dvlad.spaces import ACTION_DIM, EnvSpec

configure_mujoco_gl()  # must precede the first ``import mujoco`` in the process

import mujoco  # noqa: E402

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.05, 0.05),
    "green": (0.05, 0.85, 0.05),
    "blue": (0.05, 0.15, 1.0),
    "yellow": (0.95, 0.9, 0.05),
    "magenta": (0.9, 0.05, 0.9),
    "cyan": (0.05, 0.9, 0.9),
    "orange": (1.0, 0.5, 0.0),
    "black": (0.02, 0.02, 0.02),
}
"""Cube colours in order; an env with ``num_objects`` = n uses the first n."""

CUBE_HALF = 0.025
"""Half the cube edge (5 cm cubes, about 6 px wide in a 64×64 image)."""
CUBE_XY_RANGE = 0.14
"""Cube centres are drawn in [−range, range]² on the table."""
MIN_CUBE_SPACING = 0.1
"""Minimum distance between cube centres, so touching one never touches another."""
GRIPPER_XY_LIMIT = 0.18
"""The tip's xy box: the cubes plus a margin, all of it in the camera's view."""
Z_MIN = 2 * CUBE_HALF + 0.005
"""The tip stays just above the cube tops, so nothing collides and physics stays cheap."""
Z_MAX = 0.2
START_Z = 0.10
START_XY_RANGE = 0.05
FINGER_MAX_OPEN = 0.02
SUBSTEPS = 10
"""Physics steps of 2 ms per env step (20 ms of simulated time)."""
NUM_INIT_STATES = 50
"""Fixed starts for ``reset(init_state=i)``; start i is seeded by ``[INIT_STATE_TAG, i]``."""
INIT_STATE_TAG = 0x5EAC4


def _scene_xml(num_objects: int, image_size: int) -> str:
    """MJCF of the scene. Contacts are off (the tip never goes below the cube tops)."""
    cubes = "\n".join(
        f'<body name="cube{i}" mocap="true" pos="0 0 {CUBE_HALF}">'
        f'<geom type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" rgba="{r} {g} {b} 1"/></body>'
        for i, (r, g, b) in enumerate(list(COLOURS.values())[:num_objects])
    )
    finger = (
        '<body name="finger_{side}" pos="0 0 0.02">'
        '<joint name="finger_{side}" type="slide" axis="{axis} 0 0" range="0 {open}"/>'
        '<inertial pos="0 0 0" mass="0.02" diaginertia="1e-5 1e-5 1e-5"/>'
        '<geom type="box" pos="{x} 0 0" size="0.004 0.012 0.02" rgba="0.9 0.9 0.9 1"/></body>'
    )
    fingers = "".join(
        finger.format(side=side, axis=sign, x=0.006 * sign, open=FINGER_MAX_OPEN)
        for side, sign in (("l", -1), ("r", 1))
    )
    off = max(image_size, 64)
    return f"""
<mujoco model="reach">
  <option timestep="0.002" gravity="0 0 0" integrator="implicitfast"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="{off}" offheight="{off}"/>
    <headlight ambient="0.5 0.5 0.5" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default><geom contype="0" conaffinity="0"/></default>
  <worldbody>
    <light pos="0 -0.2 1" dir="0 0.2 -1" directional="true" castshadow="false" diffuse="0.4 0.4 0.4"/>
    <geom name="table" type="box" pos="0 0 -0.02" size="0.6 0.6 0.02" rgba="0.45 0.45 0.45 1"/>
    <camera name="image" pos="0 -0.364 1.169" xyaxes="1 0 0 0 0.940 0.342" fovy="26"/>
    <body name="gripper">
      <joint name="gx" type="slide" axis="1 0 0"/>
      <joint name="gy" type="slide" axis="0 1 0"/>
      <joint name="gz" type="slide" axis="0 0 1"/>
      <inertial pos="0 0 0.05" mass="0.1" diaginertia="1e-4 1e-4 1e-4"/>
      <geom type="box" pos="0 0 0.048" size="0.03 0.014 0.008" rgba="0.95 0.95 0.95 1"/>
      <geom type="cylinder" pos="0 0 0.09" size="0.008 0.035" rgba="0.95 0.95 0.95 1"/>
      <site name="tip" pos="0 0 0" size="0.005" group="3"/>
      {fingers}
    </body>
    {cubes}
  </worldbody>
  <actuator>
    <position joint="gx" kp="4000" dampratio="1"/>
    <position joint="gy" kp="4000" dampratio="1"/>
    <position joint="gz" kp="4000" dampratio="1"/>
    <position joint="finger_l" kp="200" dampratio="1"/>
    <position joint="finger_r" kp="200" dampratio="1"/>
  </actuator>
</mujoco>
"""


class ReachEnv:
    """Move the gripper tip to within ``touch_radius`` of the named cube's centre.

    Reward is dense shaped progress, ``10 * (previous distance − distance)`` with the
    3-D tip-to-cube distance, plus 1 on success; success terminates the episode.
    Starts are random cube layouts (non-overlapping), a random target colour and a
    gripper near the centre at ``start_height`` (default ``START_Z``; at ``Z_MIN`` only
    colour-grounded sideways moves earn progress, height gives none).
    """

    def __init__(
        self,
        num_objects: int = 3,
        image_size: int = 64,
        max_episode_steps: int = EPISODE_LIMITS["reach"],
        max_delta: float = 0.03,
        touch_radius: float = 0.05,
        start_height: float = START_Z,
        seed: int | None = None,
    ) -> None:
        if not 1 <= num_objects <= len(COLOURS):
            raise ValueError(f"num_objects must be in 1..{len(COLOURS)}, got {num_objects}")
        self.num_objects = num_objects
        self.max_delta = max_delta
        self.touch_radius = touch_radius
        if not Z_MIN <= start_height <= Z_MAX:
            raise ValueError(f"start_height must be in {Z_MIN:.3f}..{Z_MAX:.3f} m, got {start_height}")
        self.start_height = start_height
        self.colours = list(COLOURS)[:num_objects]
        self.spec = EnvSpec(
            cameras={"image": (image_size, image_size)},
            proprio_dim=4,
            max_episode_steps=max_episode_steps,
            num_init_states=NUM_INIT_STATES,
            aux_dim=2,
        )
        self._model = mujoco.MjModel.from_xml_string(_scene_xml(num_objects, image_size))
        self._data = mujoco.MjData(self._model)
        self._renderer = mujoco.Renderer(self._model, image_size, image_size)
        self._tip = self._model.site("tip").id
        self._camera = self._model.camera("image").id
        self._focal = 1.0 / np.tan(np.radians(self._model.cam_fovy[self._camera]) / 2)
        self._rng = np.random.default_rng(seed)
        self._low = np.array([-GRIPPER_XY_LIMIT, -GRIPPER_XY_LIMIT, Z_MIN])
        self._high = np.array([GRIPPER_XY_LIMIT, GRIPPER_XY_LIMIT, Z_MAX])
        self._proprio_low = np.array([*self._low, 0.0])
        self._proprio_span = np.array([*(self._high - self._low), FINGER_MAX_OPEN])
        self._target = np.zeros(3)
        self._cube_xy = np.zeros((num_objects, 2))
        self._target_index = 0
        self._steps = 0
        self._dist = 0.0
        self.reset()  # also warms the renderer: the first frame is the slow one

    # -- read-only views, for scripted controllers in tests and demos -------------
    @property
    def target_colour(self) -> str:
        return self.colours[self._target_index]

    @property
    def target_position(self) -> np.ndarray:
        """Centre of the target cube (world frame, metres)."""
        return np.array([*self._cube_xy[self._target_index], CUBE_HALF])

    @property
    def cube_positions(self) -> np.ndarray:
        """Centres of all cubes, in ``colours`` order (num_objects × 3)."""
        return np.column_stack([self._cube_xy, np.full(self.num_objects, CUBE_HALF)])

    @property
    def tip_position(self) -> np.ndarray:
        return self._data.site_xpos[self._tip].copy()

    def image_position(self, point: np.ndarray) -> np.ndarray:
        """Pinhole projection of a world point into the camera image: float32 (x right, y down),
        each in [-1, 1] across the (square) image. MuJoCo cameras look down their −z axis."""
        rotation = self._data.cam_xmat[self._camera].reshape(3, 3)  # columns: camera x, y, z in world
        p = rotation.T @ (np.asarray(point) - self._data.cam_xpos[self._camera])
        return np.array([self._focal * p[0] / -p[2], -self._focal * p[1] / -p[2]], dtype=np.float32)

    # -- protocol -----------------------------------------------------------------
    def reset(self, seed: int | None = None, init_state: int | None = None) -> Observation:
        """Draw a start. ``init_state`` (in ``range(NUM_INIT_STATES)``) wins over ``seed``."""
        rng = start_rng(seed, init_state, num_init_states=NUM_INIT_STATES, tag=INIT_STATE_TAG, fallback=self._rng)
        self._cube_xy = self._draw_layout(rng)
        self._target_index = int(rng.integers(self.num_objects))
        start = np.array([*rng.uniform(-START_XY_RANGE, START_XY_RANGE, 2), self.start_height])

        model, data = self._model, self._data
        mujoco.mj_resetData(model, data)
        data.mocap_pos[:, :2] = self._cube_xy
        data.mocap_pos[:, 2] = CUBE_HALF
        data.qpos[:3] = start
        data.qpos[3:5] = FINGER_MAX_OPEN
        data.ctrl[:3] = start
        data.ctrl[3:5] = FINGER_MAX_OPEN
        mujoco.mj_forward(model, data)
        self._target = start
        self._steps = 0
        self._dist = self._distance()
        return self._observe()

    def step(self, action: np.ndarray) -> StepResult:
        a = np.clip(np.nan_to_num(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM)), -1.0, 1.0)
        self._target = np.clip(self._target + self.max_delta * a[:3], self._low, self._high)
        self._data.ctrl[:3] = self._target
        self._data.ctrl[3:5] = FINGER_MAX_OPEN * (1.0 - a[6]) / 2.0
        mujoco.mj_step(self._model, self._data, nstep=SUBSTEPS)
        self._steps += 1

        dist = self._distance()
        success = dist < self.touch_radius
        reward = 10.0 * (self._dist - dist) + (1.0 if success else 0.0)
        self._dist = dist
        truncated = not success and self._steps >= self.spec.max_episode_steps
        return StepResult(
            obs=self._observe(),
            reward=float(reward),
            terminated=success,
            truncated=truncated,
            success=success,
            info={"distance": float(dist)},
        )

    def close(self) -> None:
        self._renderer.close()

    # -- internals ------------------------------------------------------------------
    def _draw_layout(self, rng: np.random.Generator) -> np.ndarray:
        """Cube centres no closer than ``MIN_CUBE_SPACING``: cubes are placed one by one,
        each redrawn until it fits, and the layout starts over if one cannot fit (only
        plausible with many cubes)."""
        while True:
            xy: list[np.ndarray] = []
            for _ in range(100 * self.num_objects):
                p = rng.uniform(-CUBE_XY_RANGE, CUBE_XY_RANGE, 2)
                if all(np.linalg.norm(p - q) >= MIN_CUBE_SPACING for q in xy):
                    xy.append(p)
                    if len(xy) == self.num_objects:
                        return np.array(xy)

    def _distance(self) -> float:
        return float(np.linalg.norm(self.tip_position - self.target_position))

    def _observe(self) -> Observation:
        self._renderer.update_scene(self._data, camera="image")
        proprio = (2 * (self._data.qpos[:4] - self._proprio_low) / self._proprio_span - 1).astype(np.float32)
        return Observation(
            images={"image": self._renderer.render()},
            proprio=proprio,
            instruction=f"touch the {self.target_colour} cube",
            aux=self.image_position(self.target_position),
        )
