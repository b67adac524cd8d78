"""Demonstrations in LIBERO's HDF5 layout: written by scripted experts, read for behaviour cloning.

Why LIBERO's layout (robomimic's): the demonstrations VLA researchers hold (``libero_spatial`` ... as
LIBERO publishes them) are in it, so a reader of that layout warm-starts a policy from them, and an
expert that writes it (``dvlad.envs.reach_expert``) gives tests and the demo the same files offline.
Why a module of its own, beside ``dvlad.spaces``: envs write demonstrations and the learner reads
them, and neither may import the other.

Layout (one file; LIBERO holds one task per file)::

    data                          attrs: problem_info (JSON, "language_instruction")
    data/demo_N                   attrs: num_samples; ours also language_instruction (one per demo)
    data/demo_N/actions           T×7 floats in [-1, 1]
    data/demo_N/obs/CAMERA_rgb    uint8 T×H×W×3 (LIBERO: agentview_rgb, eye_in_hand_rgb, stored as
                                  robosuite renders them, upside down; flipped on reading as the env flips)
    data/demo_N/obs/proprio       float32 T×P; LIBERO files have ee_states (6) and gripper_states (2)
                                  instead, whose concatenation is the LIBERO env's proprio
    data/demo_N/obs/aux           float32 T×A, optional (ours): the env's auxiliary labels
                                  (``EnvSpec.aux_dim``), so a cloning learner can add ``algo.aux_coef``'s loss
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvlad.spaces import ACTION_DIM, EnvSpec

LIBERO_CAMERAS = {"agentview": "agentview_rgb", "wrist": "eye_in_hand_rgb"}
"""D-VLA camera name -> LIBERO's observation key; any other camera is stored as ``CAMERA_rgb``."""
LIBERO_PROPRIO = ("ee_states", "gripper_states")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:  # h5py comes with the libero extra
        raise ImportError("reading or writing demonstrations needs h5py: pip install 'dvla[libero]'") from exc
    return h5py


def camera_key(camera: str) -> str:
    return LIBERO_CAMERAS.get(camera, f"{camera}_rgb")


@dataclass
class Demonstrations:
    """Every step of every demonstration, as rows."""

    images: dict[str, np.ndarray]
    """camera -> uint8 N×H×W×3, upright."""
    proprio: np.ndarray
    """float32 N×P."""
    instructions: list[str]
    """N instructions."""
    actions: np.ndarray
    """float32 N×K×7: the K actions from each step on (the last repeated past the demonstration's end)."""
    aux: np.ndarray | None = None
    """float32 N×A: the env's auxiliary labels where every demonstration holds them (``obs/aux``), else None."""

    def __len__(self) -> int:
        return len(self.instructions)


class DemoWriter:
    """Appends demonstrations to a new file in the layout above."""

    def __init__(self, path: str | Path, instruction: str = "") -> None:
        self._file = _h5py().File(Path(path), "w")
        self._data = self._file.create_group("data")
        self._data.attrs["problem_info"] = json.dumps({"language_instruction": instruction})
        self.count = 0

    def add(self, images: dict[str, np.ndarray], proprio: np.ndarray, actions: np.ndarray, instruction: str,
            aux: np.ndarray | None = None) -> None:
        """One demonstration: per camera T×H×W×3 frames (upright), T×P proprio, T×7 actions, and optionally
        T×A auxiliary labels."""
        demo = self._data.create_group(f"demo_{self.count}")
        demo.attrs["num_samples"] = len(actions)
        demo.attrs["language_instruction"] = instruction
        demo.create_dataset("actions", data=np.asarray(actions, dtype=np.float32))
        obs = demo.create_group("obs")
        for camera, frames in images.items():
            frames = np.asarray(frames, dtype=np.uint8)
            obs.create_dataset(camera_key(camera), data=frames[:, ::-1, ::-1] if camera in LIBERO_CAMERAS else frames)
        obs.create_dataset("proprio", data=np.asarray(proprio, dtype=np.float32))
        if aux is not None:
            obs.create_dataset("aux", data=np.asarray(aux, dtype=np.float32))
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DemoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def demo_files(path: str | Path) -> list[Path]:
    """The HDF5 files ``path`` names: itself, or the ``*.hdf5`` of a directory (a LIBERO suite's folder)."""
    path = Path(path).expanduser()
    files = sorted(path.glob("*.hdf5")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ValueError(f"demonstrations {str(path)!r}: no such file, or a directory without *.hdf5 files")
    return files


def read_demonstrations(path: str | Path, env_spec: EnvSpec, action_chunk: int = 1) -> Demonstrations:
    """Every step of every demonstration of ``path`` (a file or a folder of them), shaped for ``env_spec``.
    ValueError naming the file and what does not fit (a missing camera, another image size or proprio)."""
    h5py = _h5py()
    images: dict[str, list[np.ndarray]] = {c: [] for c in env_spec.cameras}
    proprio: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    aux: list[np.ndarray | None] = []
    instructions: list[str] = []
    for file in demo_files(path):
        with h5py.File(file, "r") as f:
            if "data" not in f:
                raise ValueError(f"demonstrations {file}: no 'data' group (not LIBERO's layout)")
            info = json.loads(f["data"].attrs.get("problem_info", "{}"))
            for name in sorted(f["data"], key=lambda n: int(n.rsplit("_", 1)[-1]) if n[-1].isdigit() else -1):
                demo = f["data"][name]
                where = f"{file}:{name}"
                acts = np.asarray(demo["actions"], dtype=np.float32)
                if acts.ndim != 2 or acts.shape[1] != ACTION_DIM:
                    raise ValueError(f"demonstrations {where}: actions are {acts.shape}, not T×{ACTION_DIM}")
                for camera, (h, w) in env_spec.cameras.items():
                    key = camera_key(camera)
                    if key not in demo["obs"]:
                        raise ValueError(f"demonstrations {where}: no obs/{key} for camera {camera!r}")
                    frames = np.asarray(demo["obs"][key])
                    if frames.shape[1:] != (h, w, 3):
                        raise ValueError(f"demonstrations {where}: obs/{key} frames are {frames.shape[1:]}, the env "
                                         f"renders {(h, w, 3)} (set the env's image_size to match)")
                    images[camera].append(frames[:, ::-1, ::-1] if camera in LIBERO_CAMERAS else frames)
                state = (np.asarray(demo["obs"]["proprio"]) if "proprio" in demo["obs"] else
                         np.concatenate([np.asarray(demo["obs"][k]) for k in LIBERO_PROPRIO], axis=1))
                if state.shape[1] != env_spec.proprio_dim:
                    raise ValueError(f"demonstrations {where}: proprio has {state.shape[1]} values, the env "
                                     f"{env_spec.proprio_dim}")
                proprio.append(state.astype(np.float32))
                later = np.minimum(np.arange(len(acts))[:, None] + np.arange(action_chunk), len(acts) - 1)
                actions.append(acts[later])
                labels = np.asarray(demo["obs"]["aux"], dtype=np.float32) if "aux" in demo["obs"] else None
                aux.append(labels if labels is not None and labels.shape == (len(acts), env_spec.aux_dim) else None)
                text = demo.attrs.get("language_instruction", info.get("language_instruction", ""))
                instructions.extend([str(text)] * len(acts))
    if not instructions:
        raise ValueError(f"demonstrations {str(path)!r} hold no demonstration")
    return Demonstrations(images={c: np.concatenate(v) for c, v in images.items()}, proprio=np.concatenate(proprio),
                          instructions=instructions, actions=np.concatenate(actions),
                          aux=None if not env_spec.aux_dim or any(a is None for a in aux) else np.concatenate(aux))
