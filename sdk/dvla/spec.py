"""The job-spec schema, defined once here, in the client package.

Why here: `dvla validate` must work on a laptop without torch, and the daemon and
the job runner import this same module, so a spec the client accepts is exactly a
spec the engine runs.

A job is a TOML file with up to eight sections, ``[job]``, ``[resources]``, ``[placement]``,
``[policy]``, ``[env]``, ``[algo]``, ``[pipeline]`` and ``[train]``; every key has a default, so any
section, or the whole file, may be left out (an empty file is a valid job: all defaults).
``docs/jobs.md`` is the reference.

Public API::

    parse_spec(text, source="<job>") -> JobSpec     # TOML text
    load_spec(path) -> JobSpec                     # a TOML file
    spec_from_dict(data, source="<job>") -> JobSpec  # a decoded dict (JSON / msgpack body)
    spec_to_dict(spec) -> dict                     # the resolved spec, every key filled in
    dump_toml(spec) -> str                         # needs tomli_w (not a client dependency)
    key_position(text, key) -> (line, column)      # where a dotted key is written

Every failure is a :class:`SpecError` listing every problem found, each a :class:`SpecIssue`
with the dotted key, the reason and, for TOML text, the line and column.

Standard library only: the client imports this without torch or numpy.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from dvla import catalog, layouts
from dvla.memsize import parse_size

# --------------------------------------------------------------------------------------------
# The schema. Attribute docstrings are the reference text of docs/jobs.md.
# --------------------------------------------------------------------------------------------


@dataclass
class JobSection:
    name: str = "job"
    """Job name: letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit; at most 64."""
    seed: int = 0
    """Seed of every random generator of the job (≥ 0)."""
    mode: Literal["async", "sync"] = "async"
    """async: the four lanes overlap; sync: the same lanes strictly in sequence (the baseline)."""
    output_dir: str = "runs/{name}"
    """Where metrics, checkpoints and the TensorBoard log go; ``{name}`` is replaced."""


@dataclass
class ResourcesSection:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when a GPU is visible, else CPU. cuda: needs gpus ≥ 1 (under dvlad a job with
    gpus = 0 sees no GPU)."""
    gpus: int = 0
    """GPUs the job asks for (must be 0 with device "cpu"). ``[placement]`` says which of them run
    learner ranks and which actor replicas."""
    torch_threads: int = 1
    """Intra-op threads per torch process (learner, actor); env workers take the other cores."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 on a GPU (bf16 actor replica, bf16 autocast in the learner), fp32 on a CPU.
    fp32 on a GPU: the actor's behaviour log-probs are exactly the learner's, at twice the bytes."""
    weight_pool: str = "auto"
    """GPU memory of the weight pool on each of the job's GPUs (parameters, optimizer state, the actor
    replica, staging buffers), as "6GiB", "512MiB" or "20GB"; "auto": the estimate from the model."""
    activation_pool: str = "auto"
    """Cap of the activation pool on each of the job's GPUs (activations, gradients, batches); a job
    that passes it fails, saying so. "auto": the rest of the GPU on GPUs of its own; with
    share_gpus, the estimate from the model, batch sizes and sequence length plus a margin."""
    share_gpus: bool = False
    """Let dvlad put other jobs on this job's GPUs (and this job on theirs) while every job's two
    budgets fit each GPU's memory; false: the job's GPUs are its own."""
    share_base: bool = False
    """A LoRA job (transformer-vla with policy.args.lora) maps one read-only copy of its base trunk,
    held by dvlad for every job of its user (or of the group dvlad's node.share_base_group names) on
    the same device and base, instead of building its own; verified by hash at each checkpoint.
    Run without dvlad, the job builds its own copy."""


@dataclass
class PlacementSection:
    layout: Literal["auto", "decoupled", "colocated"] = "auto"
    """decoupled: learner devices and actor devices are disjoint (the inference plane never shares a
    GPU with the training plane); colocated: every device runs an actor replica and a learner rank;
    auto: colocated on one device, decoupled on more. docs/planes.md draws both."""
    learner_gpus: int = 0
    """decoupled: how many of the job's devices run data-parallel learner ranks; 0: as many as the
    lane costs predict fastest (``scripts/plan_job.py`` shows the choice)."""
    cpu_devices: int = 0
    """Run the layout on this many CPU devices instead of GPUs (each device its own processes, the
    learner ranks joined by Gloo): the multi-device code without a GPU. 0: the job's GPUs, or one
    device."""
    replication_fanout: int = 2
    """How many copies of a new version one device sends at most when it passes it on (≥ 1): 2 is a
    binary tree, 1 a pipelined chain (see dvlad/gpu/replication.py)."""
    nodes: int = 1
    """Servers the job spans (≥ 1): each runs this layout on its own devices, with its own env
    workers and actor replicas, and every node's learner ranks join one data-parallel group
    (docs/federation.md). 1: one server, no federation."""
    collective_timeout_s: float = 60.0
    """With ``nodes`` > 1: how long a learner rank waits for the other nodes' ranks in one collective
    (a rollout's sampling on the slowest node included) before the job fails (> 0). A peer whose
    process died ends the job at once; this bounds the wait for one that went silent."""


@dataclass
class PolicySection:
    name: str = "tiny-vla"
    """A built-in policy name (``tiny-vla``, ``transformer-vla``, ``hf-vla``) or ``"package.module:function"``
    returning a Policy; any other name is refused."""
    action_chunk: int = 1
    """Actions the policy emits per inference call, executed in order."""
    checkpoint: str = ""
    """Optional safetensors checkpoint (file or run directory) to start from."""
    args: dict[str, Any] = field(default_factory=dict)
    """Free-form keyword arguments for the policy factory."""


@dataclass
class EnvSection:
    name: str = "reach"
    """A built-in env name (``reach``, ``synthetic``, ``libero``) or ``"package.module:function"``;
    any other name is refused."""
    num_envs: int = 16
    """Environments stepped in parallel; divisible by groups × workers."""
    groups: int = 2
    """Env groups for double buffering: one group simulates while another is inferred."""
    workers: int = 2
    """Env worker processes; each steps num_envs / workers envs."""
    max_episode_steps: int = 0
    """0: the env's own limit."""
    step_timeout_s: float = 30.0
    """A worker that does not answer within this is replaced and its episodes dropped."""
    max_worker_replacements: int = 5
    """Dead or hung env workers replaced within ``replacement_window_min``; one more fails the job
    with the reason (an env that crashes, exits or hangs on every step must not run for ever)."""
    replacement_window_min: float = 10.0
    """The window, in minutes, that ``max_worker_replacements`` counts over."""
    nice: int = 19
    """How much the env workers lower their CPU priority (Linux niceness, 0–19), as batch work
    (SCHED_BATCH: a waking worker never preempts). The actor and the learner are one thread each on
    the job's critical path; the workers are many and interchangeable. At 19 they yield a core
    whenever the actor or the learner wants it and take every cycle those leave: a learner-bound job
    stops time-slicing its learner with the simulators and a simulator-bound one loses nothing
    (docs/benchmarks.md). 0: all share the cores equally."""
    args: dict[str, Any] = field(default_factory=dict)
    """Free-form keyword arguments for the env constructor."""


@dataclass
class AlgoSection:
    name: Literal["ppo", "grpo", "bc"] = "ppo"
    """ppo: clipped policy gradient with a value head and GAE; grpo: group-relative advantages; bc:
    behaviour cloning of ``demonstrations`` (the rollouts only measure the policy)."""
    demonstrations: str = ""
    """bc: an HDF5 file of demonstrations in LIBERO's layout, or a folder of them (a LIBERO suite's)."""
    learning_rate: float = 3e-4
    """Adam learning rate (> 0); no weight decay."""
    gamma: float = 0.99
    """Discount factor, in [0, 1]."""
    gae_lambda: float = 0.95
    """GAE λ, in [0, 1]."""
    clip_coef: float = 0.2
    """PPO ratio clip ε, in (0, 1)."""
    ratio_cap: float = 3.0
    """Dual-clip bound: importance ratios of stale samples are truncated at this (> 1 + clip_coef)."""
    proximal_clip: bool = False
    """Decoupled PPO: clip around the policy at the start of each update (one extra forward pass),
    correcting staleness with a truncated importance weight; false: clip around the acting policy."""
    vf_coef: float = 0.5
    """Value-loss weight (≥ 0)."""
    ent_coef: float = 0.0
    """Entropy-bonus weight (≥ 0)."""
    aux_coef: float = 0.0
    """Weight of the auxiliary loss (≥ 0): mean squared error of the policy's prediction of the
    env's privileged labels (``EnvSpec.aux_dim``); ignored where the env has none."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (> 0)."""
    update_epochs: int = 4
    """Passes over each batch of segments."""
    minibatches: int = 4
    """Minibatches per pass."""
    norm_adv: bool = True
    """PPO: normalise advantages per minibatch (GRPO's are standardised within each group already)."""
    group_size: int = 8
    """GRPO: episodes that share one start; advantages are relative within the group."""


@dataclass
class PipelineSection:
    segment_steps: int = 32
    """Steps per trajectory segment (GRPO: at least the episode limit, the env's own when
    env.max_episode_steps is 0)."""
    max_staleness: int = 1
    """Sampling pauses rather than let learner version − acting version exceed this (sync: forced to 0)."""
    queue_segments: int = 0
    """Trajectory-queue capacity in segments; 0: groups × (max_staleness + 1)."""
    compile_actor: bool = False
    """Compile the actor's forward whole with torch.compile (static shapes; on a GPU as CUDA graphs,
    one launch per batch instead of one per kernel). Costs a compile when the job starts."""
    learner: Literal["process", "thread"] = "process"
    """Where the learn lane runs. process: its own interpreter, never sharing the GIL with the
    actor. thread: in the actor's process, so on a GPU the actor's inference runs on a
    high-priority CUDA stream ahead of the learner's queued kernels (between processes a GPU only
    time-slices); measured no faster on the H100 (docs/benchmarks.md), as the two then share the GIL."""


@dataclass
class TrainSection:
    total_env_steps: int = 200_000
    """Stop after this many env steps (summed over all envs)."""
    max_minutes: float = 0.0
    """Wall-clock limit from the job's start, set-up included (0: none)."""
    stop_at_success: float = 0.0
    """Stop early once the success rate (of a window holding enough episodes) is at least this for
    ``stop_after_updates`` updates in a row; in [0, 1]; 0: off."""
    stop_after_updates: int = 10
    """Consecutive updates ``stop_at_success`` must hold for (≥ 1)."""
    checkpoint_every: int = 20
    """Updates between checkpoints (0: only at the end)."""
    log_every: int = 1
    """Updates between metric rows."""
    resume: bool = True
    """Continue from the output directory's last checkpoint if there is one."""
    restart_on_node_failure: bool = False
    """A multi-node job (``placement.nodes`` > 1) whose node goes down (no heartbeat for the daemons'
    ``down_after_s``) is submitted again by its coordinator, starting from its last checkpoint, on
    the nodes up then (docs/federation.md); false: it fails."""


@dataclass
class JobSpec:
    job: JobSection = field(default_factory=JobSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    placement: PlacementSection = field(default_factory=PlacementSection)
    policy: PolicySection = field(default_factory=PolicySection)
    env: EnvSection = field(default_factory=EnvSection)
    algo: AlgoSection = field(default_factory=AlgoSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    train: TrainSection = field(default_factory=TrainSection)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@dataclass
class SpecIssue:
    """One problem of a job spec: the dotted key (``""`` when none applies), why, and where."""

    key: str
    reason: str
    line: int | None = None
    column: int | None = None
    source: str = "<job>"
    """The file name (or ``<job>``) the line refers to."""

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class SpecError(ValueError):
    """A job spec that cannot run; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = list(issues)
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.issues) == 1:
            return str(self.issues[0])
        source = self.issues[0].source if self.issues else "<job>"
        lines = [f"{source}: {len(self.issues)} problems in the job spec:"]
        lines += [f"  {issue}" for issue in self.issues]
        return "\n".join(lines)

    def __reduce__(self):  # keep the issues across pickling (process boundaries)
        return (type(self), (self.issues,))


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def parse_spec(text: str, source: str = "<job>") -> JobSpec:
    """Parse and check TOML job text. Raises :class:`SpecError` with every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([_syntax_issue(str(exc), text, source)]) from None
    return _build_spec(data, source, _KeyLocator(text))


def load_spec(path: str | os.PathLike[str]) -> JobSpec:
    """Read and check a TOML job file. Raises :class:`SpecError` (also for an unreadable file)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SpecError([SpecIssue("", "no such file", source=source)]) from None
    except IsADirectoryError:
        raise SpecError([SpecIssue("", "is a directory, not a job file", source=source)]) from None
    except OSError as exc:
        raise SpecError([SpecIssue("", f"cannot read: {exc.strerror or exc}", source=source)]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        issue = SpecIssue("", "not UTF-8 text", line=line, source=source)
        raise SpecError([issue]) from None
    return parse_spec(text, source)


def spec_from_dict(data: dict[str, Any], source: str = "<job>") -> JobSpec:
    """Check a decoded spec (JSON or msgpack body, ``spec_to_dict`` output). No line numbers."""
    if not isinstance(data, dict):
        reason = f"expected a table of sections, got {_describe(data)}"
        raise SpecError([SpecIssue("", reason, source=source)])
    return _build_spec(data, source, None)


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The resolved spec (every key, defaults filled in) as plain dicts, for JSON, msgpack or TOML."""
    return dataclasses.asdict(spec)


def dump_toml(spec: JobSpec) -> str:
    """The resolved spec as TOML text. Needs ``tomli_w``, which the client does not depend on."""
    import tomli_w  # lazily: only writers of TOML need it

    return tomli_w.dumps(spec_to_dict(spec))


def key_position(text: str, key: str) -> tuple[int | None, int | None]:
    """Line and column (1-based) where dotted ``key`` is written in the TOML ``text`` (else where its
    nearest written parent is), for issues found outside this module; ``(None, None)`` if nowhere."""
    return _KeyLocator(text).find(tuple(key.split(".")) if key else ())


# --------------------------------------------------------------------------------------------
# Building and type checks
# --------------------------------------------------------------------------------------------

_SECTIONS: dict[str, Any] = {f.name: f.default_factory for f in dataclasses.fields(JobSpec)}
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENTRY_POINT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


_FIELD_TYPES: dict[str, dict[str, Any]] = {
    name: typing.get_type_hints(section) for name, section in _SECTIONS.items()
}


class _Checker:
    """Collects issues, locating each key in the TOML text when there is one."""

    def __init__(self, source: str, locator: _KeyLocator | None):
        self.source = source
        self.locator = locator
        self.issues: list[SpecIssue] = []
        self.bad: set[str] = set()
        """Keys whose value was refused: later checks that read them are skipped."""
        self.written: set[str] = set()
        """Keys present in the input (as opposed to defaulted)."""

    def add(self, key: str, reason: str) -> None:
        line = column = None
        if self.locator is not None:
            line, column = self.locator.find(tuple(key.split(".")) if key else ())
        self.issues.append(SpecIssue(key, reason, line, column, self.source))
        self.bad.add(key)

    def blame(self, *keys: str) -> str:
        """The first of ``keys`` the user wrote (else the first): the one a cross-field issue names."""
        return next((k for k in keys if k in self.written), keys[0])

    def ok(self, *keys: str) -> bool:
        return not any(k in self.bad for k in keys)

    def sorted_issues(self) -> list[SpecIssue]:
        return sorted(self.issues, key=lambda i: (i.line is None, i.line or 0, i.column or 0))


def _build_spec(data: dict[str, Any], source: str, locator: _KeyLocator | None) -> JobSpec:
    check = _Checker(source, locator)
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            check.add(name, _unknown_top_level(name, value))
        elif not isinstance(value, dict):
            check.add(name, f"expected a table [{name}], got {_describe(value)}")
        else:
            sections[name] = _build_section(check, name, value)
    spec = JobSpec(**sections)
    _check_values(spec, check)
    if check.issues:
        raise SpecError(check.sorted_issues())
    return spec


def _build_section(check: _Checker, section: str, table: dict[str, Any]) -> Any:
    types = _FIELD_TYPES[section]
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{section}.{key}"
        if key not in types:
            check.add(dotted, _unknown_key(section, key))
            continue
        check.written.add(dotted)
        converted, reason = _convert(types[key], value, dotted, check)
        if reason is not None:
            check.add(dotted, reason)
        elif converted is not _BAD:
            values[key] = converted
    return _SECTIONS[section](**values)


_BAD = object()


def _convert(kind: Any, value: Any, key: str, check: _Checker) -> tuple[Any, str | None]:
    """``(value, None)`` when ``value`` fits ``kind``, else ``(None, reason)``."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        allowed = typing.get_args(kind)
        if isinstance(value, str) and value in allowed:
            return value, None
        listed = ", ".join(json.dumps(a) for a in allowed)
        reason = f"expected one of {listed}, got {_describe(value)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
            if close:
                reason += f' (did you mean "{close[0]}"?)'
        return None, reason
    if origin is dict:
        if not isinstance(value, dict):
            return None, f"expected a table, got {_describe(value)}"
        if not _plain_data(value, key, check):
            return _BAD, None  # the inner issue is already recorded
        return dict(value), None
    if kind is bool:
        if isinstance(value, bool):
            return value, None
        return None, f"expected a boolean (true or false), got {_describe(value)}"
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value, None) if _fits_64_bits(value) else (None, _OUTSIDE_64_BITS)
        return None, f"expected an integer, got {_describe(value)}"
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                return None, f"expected a finite number, got {_describe(value)}"
            return float(value), None
        return None, f"expected a number, got {_describe(value)}"
    if kind is str:
        if isinstance(value, str):
            return value, None
        return None, f"expected a string, got {_describe(value)}"
    raise TypeError(f"spec field {key} has an unsupported type {kind!r}")  # a schema bug, not a user error


def _plain_data(value: Any, key: str, check: _Checker) -> bool:
    """Free-form ``args`` travel as JSON and msgpack: refuse TOML dates and times (and non-str keys)."""
    fine = True
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                check.add(key, f"table keys must be strings, got {_describe(k)}")
                return False
            fine &= _plain_data(v, f"{key}.{k}", check)
    elif isinstance(value, list):
        for v in value:
            fine &= _plain_data(v, key, check)
    elif not isinstance(value, str | int | float | bool):
        check.add(key, f"dates and times are not allowed in args, got {_describe(value)}")
        fine = False
    elif isinstance(value, int) and not _fits_64_bits(value):
        check.add(key, _OUTSIDE_64_BITS)
        fine = False
    return fine


_OUTSIDE_64_BITS = "must fit in 64 bits (TOML's integers, and what the spec's JSON and msgpack carry)"


def _fits_64_bits(value: int) -> bool:
    return -(1 << 63) <= value < 1 << 63


def _unknown_top_level(name: str, value: Any) -> str:
    if isinstance(value, dict):
        reason = "unknown section"
        close = difflib.get_close_matches(name, list(_SECTIONS), n=1)
        return reason + (f" (did you mean [{close[0]}]?)" if close else f"; sections: {', '.join(_SECTIONS)}")
    homes = [s for s, types in _FIELD_TYPES.items() if name in types]
    if homes:
        return f'unknown key at the top level (did you mean "{homes[0]}.{name}" under [{homes[0]}]?)'
    return f"unknown key at the top level; keys go under a section: {', '.join(f'[{s}]' for s in _SECTIONS)}"


def _unknown_key(section: str, key: str) -> str:
    close = difflib.get_close_matches(key, list(_FIELD_TYPES[section]), n=1)
    if close:
        return f'unknown key (did you mean "{section}.{close[0]}"?)'
    homes = [s for s, types in _FIELD_TYPES.items() if key in types]
    if homes:
        return f'unknown key in [{section}] (did you mean "{homes[0]}.{key}"?)'
    return f"unknown key in [{section}]; known keys: {', '.join(_FIELD_TYPES[section])}"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__} ({value})"


# --------------------------------------------------------------------------------------------
# Value and cross-field checks
# --------------------------------------------------------------------------------------------


_DEVICES = (1024, "more than one server holds")
_UPDATES = (10**9, "more updates than a job runs: 31 years at one a second")
_WAIT_S = (2_000_000.0, "the longest wait poll() takes is 24 days")
UPPER_BOUNDS: dict[str, tuple[float, str]] = {
    "resources.gpus": _DEVICES,
    "resources.torch_threads": (1024, "more threads than one server has cores"),
    "placement.learner_gpus": _DEVICES,
    "placement.cpu_devices": _DEVICES,
    "placement.replication_fanout": _DEVICES,
    "placement.nodes": (1024, "more servers than a lab's cluster holds"),
    "placement.collective_timeout_s": _WAIT_S,
    "policy.action_chunk": (1024, "more actions than a policy emits in one forward pass"),
    "env.num_envs": (65_536, "each env has its own observation and action slots in shared memory"),
    "env.groups": (65_536, "each env group holds at least one env, and env.num_envs is at most 65,536"),
    "env.workers": (4096, "each env worker is a process: more than one server runs"),
    "env.max_episode_steps": ((1 << 31) - 1, "the env slots count an episode's steps in 32 bits"),
    "env.step_timeout_s": _WAIT_S,
    "env.max_worker_replacements": (1_000_000, "each replacement restarts a process; a job needing more is "
                                               "crashing, not running"),
    "algo.update_epochs": (1000, "passes over one rollout: PPO's usual are 3-30"),
    "algo.minibatches": (65_536, "each minibatch needs at least one sample of the rollout"),
    "algo.group_size": (65_536, "a GRPO group lives in one env group, and env.num_envs is at most 65,536"),
    "pipeline.segment_steps": (65_536, "each of a segment's steps is a slot of the shared-memory trajectory queue"),
    "pipeline.max_staleness": (1024, "the trajectory queue holds max_staleness + 1 rollouts of each env group"),
    "pipeline.queue_segments": (65_536, "each segment is a slot of the shared-memory trajectory queue"),
    "train.total_env_steps": (1 << 53, "metric rows count env steps as 64-bit floats, exact up to 2^53"),
    "train.stop_after_updates": _UPDATES,
    "train.checkpoint_every": _UPDATES,
    "train.log_every": _UPDATES,
}
"""The largest value of every count (and of every wait, which poll() takes), with why: a spec beyond one
would take the job down (``env.num_envs`` far too large: a bare MemoryError). ``tests/test_spec.py``
checks that every integer key of the schema has one, but ``job.seed``, whose bound is every integer's
(64 bits), and ``env.nice`` (Linux's 0-19)."""


def _check_values(spec: JobSpec, check: _Checker) -> None:
    for key, (high, why) in UPPER_BOUNDS.items():
        value = _get(spec, key)
        if check.ok(key) and value > high:
            check.add(key, f"must be at most {high:,} ({why}), got {value:,}")

    def at_least(key: str, low: float) -> None:
        value = _get(spec, key)
        if check.ok(key) and value < low:
            check.add(key, f"must be at least {low}, got {value}")

    def above(key: str, low: float) -> None:
        value = _get(spec, key)
        if check.ok(key) and not value > low:
            check.add(key, f"must be greater than {low}, got {value}")

    def within(key: str, low: float, high: float, *, open_: bool = False) -> None:
        value = _get(spec, key)
        inside = low < value < high if open_ else low <= value <= high
        if check.ok(key) and not inside:
            span = f"({low}, {high})" if open_ else f"[{low}, {high}]"
            check.add(key, f"must be in {span}, got {value}")

    # [job]
    if check.ok("job.name") and not _JOB_NAME.fullmatch(spec.job.name):
        check.add("job.name", f"must be 1–64 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit; got {_describe(spec.job.name)}")
    at_least("job.seed", 0)
    if check.ok("job.output_dir"):
        reason = _output_dir_problem(spec.job.output_dir)
        if reason:
            check.add("job.output_dir", reason)

    # [resources]
    at_least("resources.gpus", 0)
    at_least("resources.torch_threads", 1)
    if check.ok("resources.device", "resources.gpus") and spec.resources.device == "cpu" \
            and spec.resources.gpus > 0:
        check.add(check.blame("resources.gpus", "resources.device"),
                  f'device "cpu" takes no GPUs, but gpus = {spec.resources.gpus}')
    if check.ok("resources.device", "resources.gpus") and spec.resources.device == "cuda" \
            and spec.resources.gpus == 0:
        check.add(check.blame("resources.device", "resources.gpus"),
                  'device "cuda" needs gpus ≥ 1: under dvlad a job with gpus = 0 sees no GPU '
                  '(CUDA_VISIBLE_DEVICES is empty); set gpus, or use device "auto" to run on the CPU')
    _check_budgets(spec, check)

    # [policy]
    if check.ok("policy.name"):
        reason = _factory_name_problem(spec.policy.name, "policy", catalog.POLICIES)
        if reason:
            check.add("policy.name", reason)
    at_least("policy.action_chunk", 1)
    if check.ok("policy.name"):
        _check_args(check, "policy", spec.policy.name, spec.policy.args, catalog.POLICY_ARGS)
        for key, kind in catalog.POLICY_ARG_TYPES.get(spec.policy.name, {}).items():
            dotted = f"policy.args.{key}"
            if key in spec.policy.args and check.ok(dotted):
                reason = _convert(kind, spec.policy.args[key], dotted, check)[1]
                if reason:
                    check.add(dotted, reason)

    # [env]
    if check.ok("env.name"):
        reason = _factory_name_problem(spec.env.name, "env", catalog.ENVS)
        if reason:
            check.add("env.name", reason)
    if check.ok("env.name"):
        _check_args(check, "env", spec.env.name, spec.env.args, catalog.ENV_ARGS)
    for key in ("env.num_envs", "env.groups", "env.workers"):
        at_least(key, 1)
    at_least("env.max_episode_steps", 0)
    above("env.step_timeout_s", 0)
    at_least("env.max_worker_replacements", 0)
    above("env.replacement_window_min", 0)
    within("env.nice", 0, 19)
    env = spec.env
    envs_split = False
    if check.ok("env.num_envs", "env.groups", "env.workers"):
        slots = env.groups * env.workers
        if env.num_envs % slots:
            check.add(check.blame("env.num_envs", "env.groups", "env.workers"),
                      f"num_envs ({env.num_envs}) must be divisible by groups × workers "
                      f"({env.groups} × {env.workers} = {slots})")
        else:
            envs_split = True

    # [algo]
    above("algo.learning_rate", 0)
    within("algo.gamma", 0, 1)
    within("algo.gae_lambda", 0, 1)
    within("algo.clip_coef", 0, 1, open_=True)
    algo = spec.algo
    if check.ok("algo.clip_coef", "algo.ratio_cap") and not algo.ratio_cap > 1 + algo.clip_coef:
        check.add(check.blame("algo.ratio_cap", "algo.clip_coef"),
                  f"ratio_cap ({algo.ratio_cap}) must be greater than 1 + clip_coef "
                  f"({1 + algo.clip_coef:g})")
    at_least("algo.vf_coef", 0)
    at_least("algo.ent_coef", 0)
    at_least("algo.aux_coef", 0)
    above("algo.max_grad_norm", 0)
    at_least("algo.update_epochs", 1)
    at_least("algo.minibatches", 1)
    at_least("algo.group_size", 1)

    # [pipeline]
    at_least("pipeline.segment_steps", 1)
    at_least("pipeline.max_staleness", 0)  # any value is fine with mode "sync": the engine forces 0
    at_least("pipeline.queue_segments", 0)

    # [train]
    at_least("train.total_env_steps", 1)
    at_least("train.max_minutes", 0)
    within("train.stop_at_success", 0, 1)
    at_least("train.stop_after_updates", 1)
    at_least("train.checkpoint_every", 0)
    at_least("train.log_every", 1)

    if algo.name == "bc" and check.ok("algo.name", "algo.demonstrations") and not algo.demonstrations:
        check.add("algo.demonstrations", 'algo.name = "bc" needs demonstrations: an HDF5 file in LIBERO\'s layout '
                  "or a folder of them (python -m dvlad.envs.reach_expert writes some for reach)")
    if algo.name == "grpo" and check.ok("algo.name"):
        _check_grpo(spec, check, envs_split)
    _check_placement(spec, check)


def _check_budgets(spec: JobSpec, check: _Checker) -> None:
    """The two pools' budgets are sizes or "auto"; sharing GPUs needs GPUs."""
    for key in ("resources.weight_pool", "resources.activation_pool"):
        value = _get(spec, key)
        if not check.ok(key) or value == "auto":
            continue
        try:
            if parse_size(value) <= 0:
                check.add(key, f'must be more than 0 bytes, got "{value}"')
        except ValueError as exc:
            check.add(key, f'{exc}; or "auto"')
    if check.ok("resources.share_gpus", "resources.gpus") and spec.resources.share_gpus and spec.resources.gpus < 1:
        check.add(check.blame("resources.share_gpus", "resources.gpus"),
                  "share_gpus shares the job's GPUs with other jobs, but it asks for none (resources.gpus = 0)")
    if check.ok("resources.share_base", "policy.name") and spec.resources.share_base:
        if spec.policy.name != "transformer-vla" or not isinstance(spec.policy.args.get("lora"), dict):
            check.add("resources.share_base", "share_base shares a LoRA job's frozen base trunk: it needs "
                      'policy.name = "transformer-vla" with policy.args.lora (full fine-tuning writes the base)')
        elif spec.resources.gpus > 1:
            check.add(check.blame("resources.share_base", "resources.gpus"),
                      f"share_base maps the base on one device; the job asks for {spec.resources.gpus} GPUs")


def _check_placement(spec: JobSpec, check: _Checker) -> None:
    """The devices split into learner ranks and actor replicas the way ``dvla.layouts`` allows."""
    placement, resources = spec.placement, spec.resources
    for key in ("placement.learner_gpus", "placement.cpu_devices"):
        if check.ok(key) and _get(spec, key) < 0:
            check.add(key, f"must be at least 0, got {_get(spec, key)}")
    if check.ok("placement.replication_fanout") and placement.replication_fanout < 1:
        check.add("placement.replication_fanout", f"must be at least 1, got {placement.replication_fanout}")
    if check.ok("placement.nodes") and placement.nodes < 1:
        check.add("placement.nodes", f"must be at least 1, got {placement.nodes}")
    if check.ok("placement.collective_timeout_s") and not placement.collective_timeout_s > 0:
        check.add("placement.collective_timeout_s", f"must be above 0, got {placement.collective_timeout_s}")
    keys = ("placement.layout", "placement.learner_gpus", "placement.cpu_devices", "resources.gpus",
            "resources.device", "env.workers", "env.groups")
    if not check.ok(*keys) or min(placement.learner_gpus, placement.cpu_devices, resources.gpus) < 0 \
            or min(spec.env.workers, spec.env.groups) < 1:
        return
    if placement.cpu_devices and (resources.gpus or resources.device == "cuda"):
        check.add(check.blame("placement.cpu_devices", "resources.gpus", "resources.device"),
                  f"cpu_devices = {placement.cpu_devices} stands in for GPUs: the job must ask for none "
                  '(resources.gpus = 0, resources.device "auto" or "cpu")')
        return
    devices = placement.cpu_devices or max(resources.gpus, 1)
    problem = layouts.split_problem(placement.layout, devices, placement.learner_gpus, spec.env.workers,
                                    spec.env.groups)
    if problem:
        check.add(check.blame("placement.learner_gpus", "placement.layout", "env.workers", "placement.cpu_devices",
                              "resources.gpus"), problem)


def _check_grpo(spec: JobSpec, check: _Checker, envs_split: bool) -> None:
    """A GRPO group (episodes sharing one start) lives in one env group and one segment."""
    env, algo = spec.env, spec.algo
    if not check.ok("algo.group_size"):
        return
    if algo.group_size < 2:
        if algo.group_size >= 1:  # below 1 is already reported
            check.add(check.blame("algo.group_size", "algo.name"),
                      f"GRPO compares episodes within a group: needs at least 2, got {algo.group_size}")
        return
    if envs_split:
        per_group = env.num_envs // env.groups
        if per_group % algo.group_size:
            check.add(check.blame("algo.group_size", "env.num_envs", "env.groups", "algo.name"),
                      f"envs per env group (num_envs / groups = {env.num_envs} / {env.groups} = "
                      f"{per_group}) must be divisible by group_size ({algo.group_size}): "
                      "a GRPO group shares one start and must live in one env group")
    if not check.ok("pipeline.segment_steps", "env.max_episode_steps", "env.name", "env.args"):
        return
    limit, which = _episode_limit(env)
    if limit is not None and spec.pipeline.segment_steps < limit:
        check.add(check.blame("pipeline.segment_steps", "env.max_episode_steps", "algo.name"),
                  f"GRPO needs whole episodes in a segment: segment_steps ({spec.pipeline.segment_steps}) "
                  f"must be at least {which} ({limit})")


def _episode_limit(env: EnvSection) -> tuple[int | None, str]:
    """The episode limit the job's env will run with, and how to name it in a message; None where
    only the env itself knows (a user's env without ``env.max_episode_steps``)."""
    if env.max_episode_steps > 0:
        return env.max_episode_steps, "env.max_episode_steps"
    return catalog.episode_limit(env.name, env.args), f"the episode limit of env {_describe(env.name)}"


def _get(spec: JobSpec, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(spec, section), name)


def _factory_name_problem(name: str, kind: str, builtins: tuple[str, ...]) -> str | None:
    """Why the engine could not resolve ``name``: it is neither one of its built-in ``kind``s nor a
    ``"package.module:function"`` (whose import only the job itself can try)."""
    if not name.strip():
        return "must not be empty"
    if ":" in name:
        if _ENTRY_POINT.fullmatch(name):
            return None
        return f'expected a built-in name or "package.module:function", got {_describe(name)}'
    if name in builtins:
        return None
    close = difflib.get_close_matches(name, builtins, n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    listed = ", ".join(builtins)
    return f'unknown {kind} {_describe(name)}{hint}: use a built-in ({listed}) or "package.module:function"'


def _check_args(check: _Checker, section: str, name: str, args: dict[str, Any],
                accepted: dict[str, tuple[str, ...]]) -> None:
    """Refuse the ``[SECTION.args]`` keys built-in ``name`` does not take, as an unknown key is refused
    (the engine would fail with a TypeError once the job had waited its turn). A user's factory
    (``package.module:function``) takes what it takes: only the job can tell."""
    known = accepted.get(name)
    if known is None:
        return
    for key, what in catalog.REQUIRED_ARGS.get(name, {}).items():
        if not args.get(key):
            check.add(f"{section}.args.{key}", f"{section} {_describe(name)} needs it: {what}")
    for key in args:
        dotted = f"{section}.args.{key}"
        if key in known or dotted in check.bad:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hint = f' (did you mean "{section}.args.{close[0]}"?)'
        elif key in _FIELD_TYPES[section]:  # action_chunk, num_envs: keys of the section itself
            hint = f' (did you mean "{section}.{key}", a key of [{section}]?)'
        else:
            hint = f"; it takes: {', '.join(known)}"
        check.add(dotted, f"unknown argument of {section} {_describe(name)}{hint}")


def _output_dir_problem(path: str) -> str | None:
    if not path.strip():
        return "must not be empty"
    if "{" in path.replace("{name}", "") or "}" in path.replace("{name}", ""):
        return f"only the placeholder {{name}} may be written, got {_describe(path)}"
    return None


# --------------------------------------------------------------------------------------------
# Where keys are written: tomllib gives no positions, so scan the (already valid) TOML text.
# --------------------------------------------------------------------------------------------


def _syntax_issue(message: str, text: str, source: str) -> SpecIssue:
    match = _TOML_POSITION.search(message)
    reason = "invalid TOML: " + (message[: match.start()] if match else message)
    if match and match.group(1):
        return SpecIssue("", reason, int(match.group(1)), int(match.group(2)), source)
    if match:  # at end of document
        last_newline = text.rfind("\n")
        return SpecIssue("", reason, text.count("\n") + 1, len(text) - last_newline, source)
    return SpecIssue("", reason, None, None, source)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _KeyLocator:
    """Line and column (1-based) where each dotted key or table header is first written.

    Knows table headers (``[env]``, ``[env.args]``, ``[[x]]``), keys (bare, quoted, dotted,
    ``env.num_envs = 3`` at the top level), inline tables and multi-line strings and arrays.
    Assumes text that tomllib accepted. ``find`` falls back to the nearest written parent
    (a key in an inline table → its table's key; an unwritten key → its section header).
    """

    def __init__(self, text: str):
        self._text = text
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self._where: dict[tuple[str, ...], tuple[int, int]] = {}
        with contextlib.suppress(IndexError, ValueError):  # a form this scanner misreads: keep the rest
            self._scan()

    def find(self, path: tuple[str, ...]) -> tuple[int | None, int | None]:
        for n in range(len(path), 0, -1):
            if path[:n] in self._where:
                return self._where[path[:n]]
        return None, None

    def _record(self, path: tuple[str, ...], pos: int) -> None:
        line = bisect.bisect_right(self._line_starts, pos)
        column = pos - self._line_starts[line - 1] + 1
        for n in range(1, len(path) + 1):
            self._where.setdefault(path[:n], (line, column))

    def _scan(self) -> None:
        text, table, i = self._text, (), 0
        while True:
            i = self._skip_blank(i, newlines=True)
            if i >= len(text):
                return
            if text[i] == "[":  # [table] or [[array.of.tables]]
                start = i
                i += 2 if text.startswith("[[", i) else 1
                parts, i = self._read_key(i)
                table = tuple(parts)
                self._record(table, start)
            else:  # key = value
                start = i
                parts, i = self._read_key(i)
                if not parts:  # cannot happen in valid TOML; do not loop forever
                    i += 1
                    continue
                self._record((*table, *parts), start)
                i = self._skip_blank(i)
                i = self._skip_value(i + 1, (*table, *parts))  # past "="
            i = self._skip_to_line_end(i)

    def _read_key(self, i: int) -> tuple[list[str], int]:
        text, parts = self._text, []
        while True:
            i = self._skip_blank(i)
            if i >= len(text):
                return parts, i
            c = text[i]
            if c == '"':
                end = self._basic_string_end(i)
                raw = text[i:end]
                try:
                    parts.append(json.loads(raw))
                except ValueError:
                    parts.append(raw[1:-1])
                i = end
            elif c == "'":
                end = text.index("'", i + 1) + 1
                parts.append(text[i + 1 : end - 1])
                i = end
            else:
                match = _BARE_KEY.match(text, i)
                if not match:
                    return parts, i
                parts.append(match.group())
                i = match.end()
            i = self._skip_blank(i)
            if i < len(text) and text[i] == ".":
                i += 1
                continue
            return parts, i

    def _skip_value(self, i: int, path: tuple[str, ...]) -> int:
        text = self._text
        i = self._skip_blank(i)
        if i >= len(text):
            return i
        for quotes in ('"""', "'''"):  # multi-line strings
            if text.startswith(quotes, i):
                end = self._ml_basic_end(i + 3) if quotes == '"""' else text.index(quotes, i + 3)
                end += 3
                while end < len(text) and text[end] == quotes[0]:  # """a""""" : content ends in quotes
                    end += 1
                return end
        c = text[i]
        if c == '"':
            return self._basic_string_end(i)
        if c == "'":
            return text.index("'", i + 1) + 1
        if c == "[":  # array: may span lines and hold comments
            i += 1
            while True:
                i = self._skip_blank(i, newlines=True)
                if i >= len(text) or text[i] == "]":
                    return i + 1
                if text[i] == ",":
                    i += 1
                    continue
                i = self._skip_value(i, path)
        if c == "{":  # inline table: record its keys too
            i += 1
            while True:
                i = self._skip_blank(i, newlines=True)
                if i >= len(text) or text[i] == "}":
                    return i + 1
                if text[i] == ",":
                    i += 1
                    continue
                start = i
                parts, i = self._read_key(i)
                if not parts:
                    return i + 1
                self._record((*path, *parts), start)
                i = self._skip_blank(i)
                i = self._skip_value(i + 1, (*path, *parts))
        while i < len(text) and text[i] not in ",]}#\n":  # number, boolean, date-time
            i += 1
        return i

    def _ml_basic_end(self, i: int) -> int:
        """Index of the closing ``\"\"\"`` of a multi-line basic string whose content starts at i."""
        text = self._text
        while True:
            if text[i] == "\\":
                i += 2
            elif text.startswith('"""', i):
                return i
            else:
                i += 1

    def _basic_string_end(self, i: int) -> int:
        text, i = self._text, i + 1
        while text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1

    def _skip_blank(self, i: int, *, newlines: bool = False) -> int:
        text = self._text
        blanks = " \t\r\n" if newlines else " \t"
        while i < len(text):
            if text[i] in blanks:
                i += 1
            elif newlines and text[i] == "#":
                i = self._skip_to_line_end(i)
            else:
                break
        return i

    def _skip_to_line_end(self, i: int) -> int:
        end = self._text.find("\n", i)
        return len(self._text) if end < 0 else end + 1
