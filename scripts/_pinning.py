"""Pin a pipeline's actor and learner to their own cores and its env workers to the rest (for bench_pipeline.py).

Why: with one env worker per core, the actor's thread (which launches the inference kernels) and
the learner's compete with the workers for the cores; a GPU lane that waits for a core shows up
as a slower inference batch, the same symptom as GPU time slicing. Pinning separates the two
causes. Affinity is per thread in Linux and is inherited by threads and processes created later,
so this process's threads get the lane cores before the run (the learner process it starts
inherits them), and a watcher moves every thread of each env worker to the other cores as soon
as the pool exists, and again every second (a worker's threads start while it builds its envs).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator


def _set_process(pid: int | str, cores: set[int]) -> None:
    """Every thread of ``pid`` onto ``cores`` (threads that ended meanwhile are skipped)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, PermissionError):
            os.sched_setaffinity(int(tid), cores)


def split_cores(lane_cores: int) -> tuple[set[int], set[int]]:
    """(cores for the actor and learner, cores for the env workers): the first ``lane_cores`` and the rest."""
    cores = sorted(os.sched_getaffinity(0))
    if not 0 < lane_cores < len(cores):
        raise ValueError(f"actor_cores must be in 1..{len(cores) - 1} on this machine, got {lane_cores}")
    return set(cores[:lane_cores]), set(cores[lane_cores:])


@contextlib.contextmanager
def pinned(lane_cores: int, worker_pids: Callable[[], list[int]]) -> Iterator[None]:
    """Within the block: this process on the lane cores, ``worker_pids()``'s processes on the rest."""
    lanes, workers = split_cores(lane_cores)
    everything = os.sched_getaffinity(0)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for pid in worker_pids():
                with contextlib.suppress(FileNotFoundError):
                    _set_process(pid, workers)
            stop.wait(1.0)

    _set_process("self", lanes)
    watcher = threading.Thread(target=watch, name="pin-workers", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        _set_process("self", everything)

