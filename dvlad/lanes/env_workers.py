"""Vectorised env workers: long-lived subprocesses stepping envs in shared-memory slots.

Why this shape (after Sample Factory's rollout workers):
- env construction is slow, so workers build their envs once and keep them;
- observations and actions live in preallocated shared-memory slots, one per env; a
  step request and its reply are tiny messages (:mod:`dvlad.lanes.messages`), never pickled data;
- the pool owns the protocol: the actor calls :meth:`EnvWorkerPool.reset`, :meth:`~EnvWorkerPool.step`,
  :meth:`~EnvWorkerPool.read` and :meth:`~EnvWorkerPool.wait`, and never writes a slot or a command;
- envs are split into **env groups** and every worker holds a slice of every group, so
  while the actor infers one group all workers step another (double buffering);
- a slot is written between two sequence counters (``seq_begin``/``seq_end``): a reader
  that finds them unequal knows it is looking at a half-written slot;
- a worker that dies or misses its step deadline is replaced; the episodes it had in
  flight are reported as dropped so the actor never feeds them to the learner. Replacements are
  budgeted (:class:`ReplacementBudget`): an env that crashes, exits or hangs on every step fails
  the job, naming the env and how its worker ended, instead of being replaced for ever.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing as mp
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import numpy as np

from dvlad.envs.base import Observation
from dvlad.exits import how_it_ended
from dvlad.lanes.child import become_lane, start_lane
from dvlad.lanes.messages import GroupStepped, Shutdown, StepGroup, WorkerBuilt, WorkerFailed, WorkerReady
from dvlad.lanes.stderr_tail import StderrTail, redirect_stderr
from dvlad.shm import ArraySpec, SharedArrays
from dvlad.spaces import ACTION_DIM, MAX_INSTRUCTION_BYTES, EnvSpec, camera_images, image_key

CMD_STEP, CMD_RESET, CMD_HOLD, CMD_START = 0, 1, 2, 3
"""Per-env command the pool writes beside the action: step it, reset it to ``seed``, leave it
untouched (an env whose episode ended and must wait, as GRPO's do), or start it from fixed start
``seed`` (``reset(init_state=seed)``) of task ``task`` (evaluation: the same starts for every policy)."""

KEEP_TASK = -1
"""``task`` of a :data:`CMD_START`: the env's own task (an env with one task, e.g. reach)."""


def slot_layout(spec: EnvSpec, num_envs: int, action_chunk: int) -> dict[str, ArraySpec]:
    """The shared arrays of ``num_envs`` env slots for envs of shape ``spec``."""
    n = num_envs
    layout = {image_key(cam): ArraySpec((n, h, w, 3), "uint8") for cam, (h, w) in spec.cameras.items()}
    if spec.aux_dim:
        layout["aux"] = ArraySpec((n, spec.aux_dim), "float32")
    layout.update(
        proprio=ArraySpec((n, spec.proprio_dim), "float32"),
        instruction=ArraySpec((n, MAX_INSTRUCTION_BYTES), "uint8"),
        reward=ArraySpec((n,), "float32"),
        terminated=ArraySpec((n,), "bool"),
        truncated=ArraySpec((n,), "bool"),
        success=ArraySpec((n,), "bool"),
        # statistics of the episode that ended on this step (valid where terminated|truncated)
        episode_return=ArraySpec((n,), "float32"),
        episode_length=ArraySpec((n,), "int32"),
        env_steps=ArraySpec((n,), "int32"),
        action=ArraySpec((n, action_chunk, ACTION_DIM), "float32"),
        command=ArraySpec((n,), "int8"),
        seed=ArraySpec((n,), "int64"),
        task=ArraySpec((n,), "int32"),
        seq_begin=ArraySpec((n,), "int64"),
        seq_end=ArraySpec((n,), "int64"),
    )
    return layout


def encode_instruction(text: str) -> np.ndarray:
    raw = text.encode()[:MAX_INSTRUCTION_BYTES]
    out = np.zeros(MAX_INSTRUCTION_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_instruction(row: np.ndarray) -> str:
    return bytes(row).rstrip(b"\0").decode(errors="replace")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs; picklable."""

    worker_id: int
    env_name: str
    env_args: dict
    env_ids: tuple[tuple[int, ...], ...]
    """env slot ids this worker steps, per env group."""
    auto_reset: bool
    base_seed: int
    envs_per_index: int = 1
    """Consecutive slots that share one ``env_index`` (see :class:`EnvWorkerPool`)."""
    first_env: int = 0
    """The job-wide number of this pool's slot 0 (each actor replica has a pool of its own): seeds
    and env indices follow the job-wide number, so no two replicas replay the same episodes."""
    cpus: tuple[int, ...] = ()
    """CPU cores the worker runs on (the ones near its replica's GPU); empty: wherever the OS says."""
    nice: int = 0
    """How much the worker lowers its CPU priority (``env.nice``; 0: not at all): workers yield the
    cores to the actor and the learner, and take every cycle those leave (:func:`_yield_cores`)."""


class _EnvSlots:
    """A worker's view of its envs and their slots."""

    def __init__(self, cfg: WorkerConfig, arrays: SharedArrays, envs: dict) -> None:
        self.cfg, self.a, self.envs = cfg, arrays, envs
        self.lazy = {i: getattr(env, "renders_on_demand", False) for i, env in envs.items()}
        """Slot -> whether its env renders only when asked (``render=False`` inside a chunk)."""
        self.images = camera_images(arrays.arrays)
        self.episodes = dict.fromkeys(envs, 0)
        self.returns = dict.fromkeys(envs, 0.0)
        self.lengths = dict.fromkeys(envs, 0)

    def _write_obs(self, i: int, obs: Observation) -> None:
        """Images, proprio and aux labels; the instruction is written at reset only (it names the
        episode's task)."""
        for cam, images in self.images.items():
            images[i] = obs.images[cam]
        self.a["proprio"][i] = obs.proprio
        if obs.aux is not None and "aux" in self.a.arrays:
            self.a["aux"][i] = obs.aux

    def _next_seed(self, i: int) -> int:
        """Distinct, reproducible seed per (job seed, env slot, episode)."""
        ss = np.random.SeedSequence([self.cfg.base_seed, self.cfg.first_env + i, self.episodes[i]])
        return int(ss.generate_state(1, dtype=np.uint32)[0])

    def start(self) -> None:
        """Fresh episodes in all of this worker's slots (at start, and after a replacement)."""
        for i in self.envs:
            self.a["seq_begin"][i] += 1
            self.reset(i, self._next_seed(i))
            self.a["seq_end"][i] = self.a["seq_begin"][i]

    def reset(self, i: int, seed: int | None, init_state: int | None = None) -> None:
        self.episodes[i] += 1
        self.returns[i], self.lengths[i] = 0.0, 0
        obs = self.envs[i].reset(seed=seed, init_state=init_state)
        self._write_obs(i, obs)
        self.a["instruction"][i] = encode_instruction(obs.instruction)

    def _switch_task(self, i: int, task: int) -> None:
        """Make env ``i`` serve ``task`` (an env that serves several, e.g. LIBERO's ``set_task``)."""
        if task == KEEP_TASK:
            return
        set_task = getattr(self.envs[i], "set_task", None)
        if set_task is None:
            raise ValueError(f"env {self.cfg.env_name!r} serves one task: it has no set_task() to start task {task}")
        set_task(task)

    def step(self, i: int) -> int:
        """Run env ``i``'s command; returns env steps taken. Slot writes are fenced by seq."""
        a = self.a
        a["seq_begin"][i] += 1
        cmd, steps = int(a["command"][i]), 0
        a["reward"][i], a["terminated"][i], a["truncated"][i], a["success"][i] = 0.0, False, False, False
        if cmd == CMD_RESET:
            self.reset(i, int(a["seed"][i]))
        elif cmd == CMD_START:
            self._switch_task(i, int(a["task"][i]))
            self.reset(i, None, init_state=int(a["seed"][i]))
        elif cmd == CMD_STEP:
            reward, result, env, lazy = 0.0, None, self.envs[i], self.lazy[i]
            chunk = a["action"][i]
            for k, action in enumerate(chunk):  # an action chunk runs in order, stopping at the end
                # only the chunk's last observation reaches the policy: an env that can skips the others' frames
                result = env.step(action, render=k == len(chunk) - 1) if lazy else env.step(action)
                reward += result.reward
                steps += 1
                if result.terminated or result.truncated:
                    break
            assert result is not None
            self.returns[i] += reward
            self.lengths[i] += steps
            a["reward"][i], a["success"][i] = reward, result.success
            a["terminated"][i], a["truncated"][i] = result.terminated, result.truncated
            if result.terminated or result.truncated:
                a["episode_return"][i], a["episode_length"][i] = self.returns[i], self.lengths[i]
                if self.cfg.auto_reset:
                    self.reset(i, self._next_seed(i))
                else:
                    self._write_obs(i, result.obs)
            else:
                self._write_obs(i, result.obs)
        a["env_steps"][i] = steps
        a["seq_end"][i] = a["seq_begin"][i]
        return steps


def _yield_cores(nice: int) -> None:
    """Make this worker batch work that yields the cores to the actor and the learner (``env.nice``).

    SCHED_BATCH: the scheduler takes the worker for CPU-bound work and never lets it preempt a
    running thread when it wakes (a worker handed a step no longer knocks the learner off its core);
    niceness ``nice`` weighs it against them (at 19 about 1.5 % of a contended core). Unlike
    SCHED_IDLE it is never starved outright, whatever else runs. Linux keeps both per thread: the
    threads already there (numpy's BLAS pool) are set one by one, and those started later (a
    simulator's own) inherit them from the main thread."""
    for tid in (int(t) for t in os.listdir("/proc/self/task")):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))


def worker_main(cfg: WorkerConfig, conn: Connection, handle_conn: Connection, stderr: Connection) -> None:
    """Entry point of a worker process: build envs, report the spec, then serve steps."""
    redirect_stderr(stderr)  # through the parent, which keeps its tail for the reason if this dies
    become_lane(f"dvla-env-{cfg.worker_id}")
    faulthandler.enable()  # a simulator that crashes leaves the Python stack it crashed in, in the log
    if cfg.cpus:
        os.sched_setaffinity(0, cfg.cpus)
    if cfg.nice:
        _yield_cores(cfg.nice)
    from dvlad.envs import make_env

    arrays = None
    envs: dict = {}
    try:
        envs = {i: make_env(cfg.env_name, env_index=(cfg.first_env + i) // cfg.envs_per_index, **cfg.env_args)
                for ids in cfg.env_ids for i in ids}
        conn.send(WorkerBuilt(next(iter(envs.values())).spec))
        arrays = SharedArrays.attach(handle_conn.recv())
        slots = _EnvSlots(cfg, arrays, envs)
        slots.start()
        conn.send(WorkerReady(os.getpid()))
        while not isinstance(msg := conn.recv(), Shutdown):
            t_start = time.monotonic()
            steps = sum(slots.step(i) for i in cfg.env_ids[msg.group])
            conn.send(GroupStepped(msg.group, t_start, time.monotonic(), steps))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except (Exception, SystemExit):  # an env that calls sys.exit() is a failure too
        conn.send(WorkerFailed(traceback.format_exc()))
    finally:
        if arrays is not None:
            arrays.close()
        for env in envs.values():  # while the process lives: GL contexts are freed before EGL's atexit terminate
            with contextlib.suppress(Exception):
                env.close()


class EnvWorkerError(RuntimeError):
    """An env failed to build or raised while stepping (a bug, not a crash to recover from), or its
    workers died or hung more often than :class:`ReplacementBudget` allows. The message, written for
    people, names the env and what happened."""


@dataclass(frozen=True)
class ReplacementBudget:
    """How many dead or hung workers a pool replaces within a window before it fails the job.

    Why a budget: a worker that crashes once (a simulator's rare bug, a stray signal) is worth
    replacing; an env that crashes, exits or hangs on every step is not, and replacing it for ever
    made such a job "succeed" with 0 episodes."""

    replacements: int = 5
    window_s: float = 600.0


class SlotTornError(RuntimeError):
    """A shared-memory slot was read while a worker was writing it (a protocol bug)."""


OUTCOME_FIELDS = ("reward", "terminated", "truncated", "success", "env_steps", "episode_return", "episode_length")
"""What a step leaves in each slot besides the next observation (see :func:`slot_layout`)."""


@dataclass
class GroupObs:
    """A copy of an env group's observations, taken between two whole writes of every slot."""

    images: dict[str, np.ndarray]
    """camera -> uint8 [E, H, W, 3]."""
    proprio: np.ndarray
    instruction: np.ndarray
    """uint8 [E, MAX_INSTRUCTION_BYTES]: zero-padded UTF-8 (:func:`decode_instruction`)."""
    aux: np.ndarray | None
    """float32 [E, aux_dim] privileged labels, or None where the env has none."""


@dataclass
class GroupResult:
    """What one step of an env group produced: per env of the group (copies, in slot order), the
    outcome of its step, and how the workers spent the step."""

    group: int
    env_steps: int
    outcome: dict[str, np.ndarray] = field(default_factory=dict)
    """:data:`OUTCOME_FIELDS` -> [E] array. ``episode_return`` and ``episode_length`` are those of
    the episode that ended on this step, valid where ``terminated | truncated``."""
    intervals: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) monotonic times each worker spent stepping this group."""
    dropped_envs: list[int] = field(default_factory=list)
    """Env slots whose worker was replaced: their episodes were dropped and reset."""

    @property
    def done(self) -> np.ndarray:
        """Where an episode ended on this step, by the task or by its time limit."""
        return self.outcome["terminated"] | self.outcome["truncated"]


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.conn, child = ctx.Pipe()
        self.handle_conn, handle_child = ctx.Pipe()
        self.stderr = StderrTail(ctx)
        self.process = ctx.Process(target=worker_main, args=(cfg, child, handle_child, self.stderr.writer),
                                   name=f"dvla-env-{cfg.worker_id}", daemon=True)
        start_lane(self.process)
        self.stderr.started()
        child.close()
        handle_child.close()
        self.pending: set[int] = set()

    def recv(self, timeout: float) -> WorkerBuilt | WorkerReady | GroupStepped:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"env worker {self.cfg.worker_id} gave no answer in {timeout:.0f} s")
        msg = self.conn.recv()
        if isinstance(msg, WorkerFailed):
            raise EnvWorkerError(f"{self.describe()} failed:\n{msg.traceback}")
        return msg

    def answer(self, timeout: float, doing: str) -> WorkerBuilt | WorkerReady | GroupStepped:
        """:meth:`recv`, where a worker that dies or stays silent is an :class:`EnvWorkerError`
        saying so and what it was ``doing``."""
        try:
            return self.recv(timeout)
        except (EOFError, OSError):
            raise EnvWorkerError(f"{self.describe()} {self.ended()} while {doing}") from None
        except TimeoutError:
            raise EnvWorkerError(f"{self.describe()} gave no answer in {timeout:g} s while {doing}") from None

    def describe(self) -> str:
        return f"env {self.cfg.env_name!r}: worker {self.cfg.worker_id}"

    def ended(self) -> str:
        """How the worker's process ended (waited for briefly: its pipe closes just before it exits) and
        what its last output says."""
        self.process.join(timeout=2)
        how = how_it_ended(self.process.exitcode) if self.process.exitcode is not None else "stopped answering"
        said = self.stderr.summary()
        return f"{how} ({f'its last output: {said}' if said else 'no output'})"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()
        self.handle_conn.close()


class EnvWorkerPool:
    """The sample lane's workers and the shared slots they write.

    Env slot ``i`` belongs to group ``i // envs_per_group``; inside a group the slots are
    dealt to workers in contiguous slices, so every worker holds a slice of every group.

    Slot ``i`` is built with ``env_index = (first_env + i) // envs_per_index`` (for factories that
    take one, e.g. LIBERO's, which serves task ``tasks[env_index % len(tasks)]``). GRPO passes its
    ``group_size``: a GRPO group replays one start in consecutive slots, so they must
    simulate the same task.
    """

    def __init__(self, env_name: str, env_args: dict, *, num_envs: int, groups: int, workers: int,
                 action_chunk: int, auto_reset: bool = True, seed: int = 0,
                 step_timeout_s: float = 30.0, build_timeout_s: float = 300.0, envs_per_index: int = 1,
                 first_env: int = 0, cpus: tuple[int, ...] = (), nice: int = 0,
                 replacement_budget: ReplacementBudget = ReplacementBudget()) -> None:
        if num_envs % (groups * workers):
            raise ValueError(f"num_envs={num_envs} must divide into groups×workers={groups * workers}")
        self.num_envs, self.groups, self.action_chunk = num_envs, groups, action_chunk
        self.envs_per_group = num_envs // groups
        self.step_timeout_s, self.build_timeout_s = step_timeout_s, build_timeout_s
        self.replaced_workers = 0
        self.budget = replacement_budget
        self._replaced_at: deque[float] = deque()
        self._ctx = mp.get_context("spawn")
        per_worker = self.envs_per_group // workers
        self._configs = [
            WorkerConfig(w, env_name, dict(env_args), tuple(
                tuple(range(g * self.envs_per_group + w * per_worker,
                            g * self.envs_per_group + (w + 1) * per_worker)) for g in range(groups)),
                auto_reset, seed, envs_per_index, first_env, cpus, nice)
            for w in range(workers)
        ]
        self.workers = [_Worker(self._ctx, c) for c in self._configs]
        self.slots: SharedArrays | None = None
        try:
            built = [w.answer(build_timeout_s, "building its envs") for w in self.workers]
            assert isinstance(built[0], WorkerBuilt), built[0]
            self.spec: EnvSpec = built[0].spec
            self.slots = SharedArrays(slot_layout(self.spec, num_envs, action_chunk))
            for w in self.workers:
                self._start_serving(w)
        except BaseException:
            self.close()
            raise

    def _start_serving(self, worker: _Worker) -> None:
        assert self.slots is not None
        worker.handle_conn.send(self.slots.handle)
        msg = worker.answer(self.build_timeout_s, "resetting its envs")
        assert isinstance(msg, WorkerReady), msg

    def group_slice(self, group: int) -> slice:
        return slice(group * self.envs_per_group, (group + 1) * self.envs_per_group)

    def reset(self, group: int, seeds: np.ndarray) -> None:
        """Start fresh episodes in every env of ``group``, env ``j`` from ``seeds[j]`` (non-blocking;
        :meth:`wait` for it)."""
        self.command(group, np.full(self.envs_per_group, CMD_RESET, np.int8), seeds=seeds)

    def step(self, group: int, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Step every env of ``group`` with its action chunk, ``actions[j]`` [chunk, ACTION_DIM]; envs
        where ``active`` is False hold still (non-blocking; :meth:`wait` for it)."""
        commands = np.full(self.envs_per_group, CMD_STEP, np.int8) if active is None else \
            np.where(active, CMD_STEP, CMD_HOLD).astype(np.int8)
        self.command(group, commands, actions=actions)

    def command(self, group: int, commands: np.ndarray, *, actions: np.ndarray | None = None,
                seeds: np.ndarray | None = None, tasks: np.ndarray | None = None) -> None:
        """Run a command per env of ``group`` (:data:`CMD_STEP` with ``actions[j]``, :data:`CMD_RESET` to
        ``seeds[j]``, :data:`CMD_START` from fixed start ``seeds[j]`` of task ``tasks[j]``,
        :data:`CMD_HOLD`), mixed in one round trip: an evaluation starts its next episodes in the envs
        that finished while the others step on (non-blocking; :meth:`wait` for it)."""
        envs, a = self.group_slice(group), self._slots
        if actions is not None:
            a["action"][envs] = actions
        if seeds is not None:
            a["seed"][envs] = seeds
        a["task"][envs] = KEEP_TASK if tasks is None else tasks
        a["command"][envs] = commands
        self._send(group)

    def read(self, group: int) -> GroupObs:
        """A copy of ``group``'s observations. Raises :class:`SlotTornError` if a worker wrote a slot
        meanwhile: the group must not be in flight (sent and not yet waited for)."""
        envs, a = self.group_slice(group), self._slots
        begin = a["seq_begin"][envs].copy()
        obs = GroupObs(images={cam: v[envs].copy() for cam, v in camera_images(a.arrays).items()},
                       proprio=a["proprio"][envs].copy(), instruction=a["instruction"][envs].copy(),
                       aux=a["aux"][envs].copy() if "aux" in a.arrays else None)
        if not np.array_equal(begin, a["seq_end"][envs]) or not np.array_equal(begin, a["seq_begin"][envs]):
            raise SlotTornError(f"env slots {envs} changed while being read")
        return obs

    @property
    def _slots(self) -> SharedArrays:
        assert self.slots is not None, "the pool is closed"
        return self.slots

    def _send(self, group: int) -> None:
        """Ask every worker to run the commands of its slots in ``group``."""
        for w in self.workers:
            w.pending.add(group)
            with contextlib.suppress(BrokenPipeError, OSError):  # found dead in wait() and replaced
                w.conn.send(StepGroup(group))

    def wait(self, group: int, timeout_s: float | None = None) -> GroupResult:
        """Block until every worker has stepped ``group``; replace any that died or hung (that gave no
        answer within ``timeout_s``, default ``step_timeout_s``: a round that rebuilds an env for
        another task, :data:`CMD_START`, may take ``build_timeout_s``)."""
        result = GroupResult(group, 0)
        timeout_s = self.step_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        waiting = {w.conn: w for w in self.workers if group in w.pending}
        while waiting:
            ready = wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:  # the rest missed the deadline
                for w in list(waiting.values()):
                    self._replace(w, result, f"did not answer a step within {timeout_s:g} s "
                                             "(env.step_timeout_s)")
                break
            for conn in ready:
                w = waiting[conn]
                try:
                    msg = w.recv(0)
                except (EOFError, OSError):
                    self._replace(w, result, w.ended())
                    del waiting[conn]
                    continue
                assert isinstance(msg, GroupStepped), msg
                w.pending.discard(msg.group)
                if msg.group == group:
                    result.env_steps += msg.env_steps
                    result.intervals.append((msg.start, msg.end))
                    del waiting[conn]
        envs = self.group_slice(group)
        result.outcome = {name: self._slots[name][envs].copy() for name in OUTCOME_FIELDS}
        return result

    def _replace(self, worker: _Worker, result: GroupResult, what_happened: str) -> None:
        """Kill ``worker``, start a fresh one on the same slots, and report its envs dropped; or, past
        the replacement budget, raise :class:`EnvWorkerError` saying ``what_happened``."""
        index = self.workers.index(worker)
        worker.kill()
        worker.pending.clear()  # nothing more to wait for from it, if this gives up
        now = time.monotonic()
        self._replaced_at.append(now)
        while self._replaced_at and now - self._replaced_at[0] > self.budget.window_s:
            self._replaced_at.popleft()
        if len(self._replaced_at) > self.budget.replacements:
            before = len(self._replaced_at) - 1
            raise EnvWorkerError(
                f"{worker.describe()} {what_happened}; {before} worker{'s' * (before != 1)} already replaced "
                f"in the last {self.budget.window_s / 60:g} min (env.max_worker_replacements = "
                f"{self.budget.replacements} in env.replacement_window_min): giving up")
        fresh = self.workers[index] = _Worker(self._ctx, worker.cfg)  # closed with the pool if it fails
        fresh.answer(self.build_timeout_s, "building its envs")
        self._start_serving(fresh)
        dropped = [i for ids in worker.cfg.env_ids for i in ids]
        result.dropped_envs.extend(dropped)
        self.replaced_workers += 1

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process.pid is not None]

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                w.conn.send(Shutdown())
        for w in self.workers:
            w.process.join(timeout=5)
            w.kill()
        if self.slots is not None:
            self.slots.unlink()
            self.slots = None
