"""Pack what a LIBERO suite needs to run on a machine without LIBERO into one .tar.xz.

Why: the lent GPU machine has no package registry and a device call carries at most 64 MiB,
while robosuite's wheel alone is 193 MB and LIBERO's asset packages 622 MB installed. A suite
opens a small part of that. This script finds which part by running the suite itself, from the
packages installed here, and packs only that:

- **Python code**: every pure-Python top-level package or module the suite's env construction,
  reset and step import (libero, robosuite, bddl, gymnasium and their small needs), all of its
  ``.py`` files. Compiled packages (numpy, mujoco, cv2 …) are left to the target machine (its
  image, or wheels carried beside the bundle, as ``.whl/`` carries mujoco).
- **Data files**: those the traced run opens from site-packages: what Python opens (an audit
  hook on ``open``: BDDL problems, init states, robosuite's and LIBERO's XML) and what MuJoCo
  opens from C (every ``file=""`` of each model XML compiled: meshes, textures).

Paths in the archive are relative to site-packages, so unpacking it into a directory and putting
that directory at the *end* of ``PYTHONPATH`` gives a working LIBERO (the target's own packages
win where both have one); ``dvlad/envs/libero_config.py`` finds the data root and the assets in
it as it finds the installed ones. ``scripts/gpu_machine.sh`` unpacks ``.libero/*.tar.xz`` so.

    python scripts/libero_bundle.py --suite libero_spatial --out .libero/libero_spatial.tar.xz
    python scripts/libero_bundle.py --check DIR --suite libero_spatial --task 0   # step it from DIR

The trace builds each task's env once (5–15 s each, with both cameras rendered).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN_PACKAGES = {"dvla", "dvlad", "dvla_sdk", "scripts", "tests"}
"""Top-level names of this repository: carried by the working tree, never bundled."""
_TARGET_HAS = """
    absl-py accelerate aiohttp attrs certifi click cloudpickle contourpy cycler filelock fonttools fsspec
    h5py huggingface-hub idna imageio jinja2 kiwisolver lazy-loader llvmlite markupsafe matplotlib mpmath
    msgpack networkx numba numpy nvidia-ml-py opencv-python-headless packaging pandas pillow protobuf psutil
    pygments pyparsing python-dateutil pyyaml requests rich safetensors scipy setuptools six sympy tqdm
    torch torchvision transformers typing-extensions urllib3 uvloop
    glfw mujoco pyopengl tomli-w
"""
TARGET_HAS = frozenset(_TARGET_HAS.split())
"""Distributions the lent GPU machine already has: its image's (.library's KINDS.md lists them), and
the wheels scripts/gpu_machine.sh installs from .whl/ (mujoco, glfw, pyopengl, tomli-w). Their code
is left out of the bundle even where pure Python."""
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")
FILE_ATTRIBUTE = re.compile(r'\bfile="([^"]+)"')


def site_dirs() -> list[Path]:
    """The directories installed packages live in (purelib and platlib of this interpreter)."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve()})


def _relative_to_site(path: Path, sites: list[Path]) -> Path | None:
    for site in sites:
        if path.is_relative_to(site):
            return path.relative_to(site)
    return None


def trace(suite: str, tasks: list[int] | None, cameras: bool) -> dict:
    """Run the suite's tasks in this process and return what they imported and opened.

    Must run in a fresh interpreter (``--trace``): modules imported before the hook are not seen."""
    opened: set[str] = set()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            opened.add(os.fsdecode(args[0]))

    sys.addaudithook(hook)
    import mujoco

    compile_xml = mujoco.MjModel.from_xml_string

    def traced_compile(xml: str, *args, **kwargs):  # MuJoCo opens meshes and textures from C
        opened.update(FILE_ATTRIBUTE.findall(xml))
        return compile_xml(xml, *args, **kwargs)

    mujoco.MjModel.from_xml_string = traced_compile
    from dvlad.envs.libero import NOOP, LiberoEnv, suite_tasks

    chosen = tasks if tasks is not None else [t.index for t in suite_tasks(suite)]
    for index in chosen:
        t0 = time.monotonic()
        env = LiberoEnv(suite, task=index, cameras=("agentview", "wrist") if cameras else False)
        env.reset(init_state=0)
        env.step(NOOP)
        env.close()
        print(f"traced {suite} task {index} in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    modules = {name.partition(".")[0]: getattr(mod, "__file__", None) for name, mod in list(sys.modules.items())}
    return {"opened": sorted(opened), "modules": {k: v for k, v in modules.items() if v}}


def _top_level_paths(modules: dict[str, str], sites: list[Path]) -> dict[str, Path]:
    """Each imported top-level package (its directory) or module (its file) from site-packages."""
    found: dict[str, Path] = {}
    for name, file in modules.items():
        if name in OWN_PACKAGES or name in sys.stdlib_module_names:
            continue
        path = Path(file).resolve()
        relative = _relative_to_site(path, sites)
        if relative is None:
            continue
        site = path.parents[len(relative.parts) - 1]
        found[name] = site / relative.parts[0]
    return found


def _is_pure(path: Path) -> bool:
    """A package or module with no compiled extension (those must come from the target)."""
    if path.is_file():
        return path.suffix == ".py"
    return not any(p.suffix in (".so", ".pyd") for p in path.rglob("*"))


def _on_target(name: str) -> bool:
    """Whether the import name ``name`` belongs to a distribution the target has (or is a hook of
    the installer's own, such as an editable install's finder)."""
    dists = importlib.metadata.packages_distributions().get(name, [])
    return name.startswith("_") or any(d.lower().replace("_", "-") in TARGET_HAS for d in dists)


def plan(traced: dict, sites: list[Path]) -> tuple[dict[Path, Path], list[str]]:
    """(source file -> archive path, names of the packages whose code is bundled).

    Data files opened are bundled when they belong to a bundled package or to a package with no
    imported code (LIBERO's asset packages); compiled and cached code never is."""
    files: dict[Path, Path] = {}
    packages = []
    imported = _top_level_paths(traced["modules"], sites)
    for name, path in sorted(imported.items()):
        if not _is_pure(path) or _on_target(name):
            continue
        packages.append(name)
        sources = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for source in sources:
            files[source] = _relative_to_site(source.resolve(), sites)
    for name in traced["opened"]:
        path = Path(name)
        if not path.is_absolute() or not path.is_file():
            continue
        relative = _relative_to_site(path.resolve(), sites)
        if relative is None or path.suffix in CODE_SUFFIXES or "__pycache__" in relative.parts:
            continue
        top = relative.parts[0]
        if top in packages or (top not in imported and top.partition("-")[0] not in OWN_PACKAGES
                               and not top.endswith((".dist-info", ".pth"))):
            files[path.resolve()] = relative
    return files, packages


def write_archive(files: dict[Path, Path], out: Path, preset: int) -> None:
    """A .tar.xz of ``files`` under their archive paths, written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:xz", preset=preset) as tar:
        for source, arcname in sorted(files.items(), key=lambda kv: str(kv[1])):
            tar.add(source, arcname=str(arcname), recursive=False)
    os.replace(tmp, out)


def build(suite: str, tasks: list[int] | None, out: Path, cameras: bool = True, preset: int = 6) -> dict:
    """Trace the suite in a fresh interpreter, then pack what it used; returns the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "trace.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--trace", str(record), "--suite", suite]
        if tasks is not None:
            command += ["--tasks", ",".join(map(str, tasks))]
        if not cameras:
            command.append("--no-cameras")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        subprocess.run(command, check=True, env=env)
        traced = json.loads(record.read_text())
    files, packages = plan(traced, site_dirs())
    write_archive(files, out, preset)
    data = [a for s, a in files.items() if s.suffix != ".py"]
    return {"archive": str(out), "archive_bytes": out.stat().st_size, "files": len(files),
            "data_files": len(data), "unpacked_bytes": sum(s.stat().st_size for s in files),
            "packages": packages}


def check(directory: Path, suite: str, task: int, steps: int) -> dict:
    """Build, reset and step one task from an unpacked bundle; say where libero and robosuite came from."""
    from dvlad.envs.libero import NOOP, LiberoEnv

    t0 = time.monotonic()
    env = LiberoEnv(suite, task=task)
    built = time.monotonic() - t0
    obs = env.reset(init_state=0)
    t0 = time.monotonic()
    for _ in range(steps):
        result = env.step(NOOP)
    rate = steps / (time.monotonic() - t0)
    env.close()
    import libero
    import robosuite

    return {"libero": libero.__path__[0], "robosuite": robosuite.__file__, "build_s": built,
            "steps_per_s": rate, "image_mean": float(obs.images["agentview"].mean()),
            "image_shape": list(result.obs.images["agentview"].shape), "instruction": obs.instruction,
            "mujoco_gl": os.environ.get("MUJOCO_GL"), "egl_device": os.environ.get("MUJOCO_EGL_DEVICE_ID"),
            "bundle": str(directory)}


def _tasks(text: str | None) -> list[int] | None:
    return None if not text else [int(t) for t in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="libero_spatial", help="LIBERO suite (default: libero_spatial)")
    parser.add_argument("--tasks", help="comma-separated task indices (default: every task of the suite)")
    parser.add_argument("--out", type=Path, help="the .tar.xz to write")
    parser.add_argument("--no-cameras", action="store_true", help="trace without rendering (physics-only jobs)")
    parser.add_argument("--preset", type=int, default=6, help="xz preset 0-9 (default 6)")
    parser.add_argument("--check", type=Path, metavar="DIR",
                        help="instead: step --task from the bundle unpacked in DIR (put DIR on PYTHONPATH "
                             "yourself) and print one JSON line")
    parser.add_argument("--task", type=int, default=0, help="with --check: the task (default 0)")
    parser.add_argument("--steps", type=int, default=20, help="with --check: steps to time (default 20)")
    parser.add_argument("--trace", type=Path, help=argparse.SUPPRESS)  # the fresh interpreter's record
    args = parser.parse_args()
    if args.trace:
        args.trace.write_text(json.dumps(trace(args.suite, _tasks(args.tasks), not args.no_cameras)))
    elif args.check:
        print(json.dumps(check(args.check, args.suite, args.task, args.steps)))
    elif args.out:
        report = build(args.suite, _tasks(args.tasks), args.out, not args.no_cameras, args.preset)
        print(json.dumps(report))
        print(f"wrote {report['archive']}: {report['archive_bytes'] / 2**20:.1f} MiB "
              f"({report['files']} files, {report['data_files']} data files, "
              f"{report['unpacked_bytes'] / 2**20:.1f} MiB unpacked)", file=sys.stderr)
    else:
        parser.error("give --out FILE (build) or --check DIR")


if __name__ == "__main__":
    main()
