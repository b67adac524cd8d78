"""Every key of a job's metric rows, declared once: its name, unit, TensorBoard group, whether it is a
column of ``metrics.csv``, and when a row carries it.

Why a module of its own, in the client: the engine writes these rows (the pipeline's reporter, the
learner's update statistics, the losses), and the job runner's progress line, the CSV and TensorBoard
sinks, Prometheus ``/metrics``, ``dvla top``, ``dvla report`` and the benchmark scripts read them. They
all import the names from here, so a renamed metric is renamed everywhere, and a reader cannot
silently look for a key nobody writes (``tests/test_metric_names.py`` runs a real job and checks both
directions). The SDK is the one package every side imports (it stays free of torch and of the daemon).

A metric is a module constant holding its key (``ENV_STEPS_PER_S == "env_steps_per_s"``), so readers
index rows with it; :data:`METRICS` maps each key to its :class:`Metric`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class When(Enum):
    """Which rows carry a metric (the row of a job that does not qualify leaves the key out)."""

    ALWAYS = "every row"
    AFTER_EPISODES = "once an episode has ended"
    WITH_CRITIC = "PPO (a learned value function)"
    WITH_AUX = "algo.aux_coef > 0 on an env with auxiliary labels"
    ON_GPU = "jobs on a GPU"
    WITH_RANKS = "jobs of several learner ranks"


class Group(Enum):
    """The TensorBoard section a metric's chart is filed under (``group/name``)."""

    EPISODES = "episodes"
    LOSSES = "losses"
    LANES = "lanes"
    PIPELINE = "pipeline"


@dataclass(frozen=True)
class Metric:
    """One key of a metric row."""

    name: str
    unit: str
    group: Group
    meaning: str
    csv: bool = False
    """A headline column of ``metrics.csv`` (columns in declaration order); every metric is in the
    JSON lines and in TensorBoard."""
    when: When = When.ALWAYS
    scalar: bool = True
    """False for the one list-valued key (the staleness histogram): JSON lines only."""
    count: bool = False
    """A whole number (versions, env steps, episodes, bytes): written as an integer (:func:`as_written`)."""

    @property
    def tensorboard_tag(self) -> str:
        return f"{self.group.value}/{self.name}"


METRICS: dict[str, Metric] = {}
"""Every metric, by key, in declaration order."""


def _declare(name: str, unit: str, group: Group, meaning: str, *, csv: bool = False, when: When = When.ALWAYS,
             scalar: bool = True, count: bool = False) -> str:
    if name in METRICS:
        raise ValueError(f"metric {name!r} declared twice")
    METRICS[name] = Metric(name, unit, group, meaning, csv, when, scalar, count)
    return name


LANES = ("sample", "infer", "learn", "distribute")
"""A job's four lanes, in the order the data flows (see DESIGN.md)."""

# -- progress -------------------------------------------------------------------------------------------
VERSION = _declare("version", "versions", Group.PIPELINE, "weight version the learner published with this update",
                   csv=True, count=True)
ENV_STEPS = _declare("env_steps", "env steps", Group.PIPELINE, "env steps sampled so far (the x axis)", csv=True,
                     count=True)
TIME_S = _declare("time_s", "s", Group.PIPELINE, "seconds since the lanes started", csv=True)
ENV_STEPS_PER_S = _declare("env_steps_per_s", "env steps/s", Group.PIPELINE,
                           "sample-lane throughput since the previous row", csv=True)

# -- episodes (the actor's rolling window of finished episodes) ------------------------------------------
SUCCESS_RATE = _declare("success_rate", "fraction", Group.EPISODES,
                        "success rate of the last 100 episodes (GRPO: of whole rollouts)", csv=True,
                        when=When.AFTER_EPISODES)
EPISODE_RETURN = _declare("episode_return", "return", Group.EPISODES, "mean return of the same episodes", csv=True,
                          when=When.AFTER_EPISODES)
EPISODE_LENGTH = _declare("episode_length", "env steps", Group.EPISODES, "mean length of the same episodes",
                          csv=True, when=When.AFTER_EPISODES)
EPISODES = _declare("episodes", "episodes", Group.EPISODES, "episodes finished so far", csv=True, count=True)

# -- the update's losses: means over its minibatches, CleanRL's names -------------------------------------
LOSS = _declare("loss", "", Group.LOSSES, "the loss minimised", csv=True)
PG_LOSS = _declare("pg_loss", "", Group.LOSSES, "policy-gradient (clipped surrogate) loss", csv=True)
V_LOSS = _declare("v_loss", "", Group.LOSSES, "value loss (clipped as CleanRL clips it)", csv=True,
                  when=When.WITH_CRITIC)
ENTROPY = _declare("entropy", "nats", Group.LOSSES, "mean entropy of the action tokens", csv=True)
APPROX_KL = _declare("approx_kl", "nats", Group.LOSSES, "approximate KL of the new policy to the old", csv=True)
CLIPFRAC = _declare("clipfrac", "fraction", Group.LOSSES, "samples whose ratio left [1 - clip_coef, 1 + clip_coef]",
                    csv=True)
RATIO_MEAN = _declare("ratio_mean", "", Group.LOSSES, "mean importance ratio")
RATIO_MAX = _declare("ratio_max", "", Group.LOSSES, "largest importance ratio")
TRUNCATED_FRAC = _declare("truncated_frac", "fraction", Group.LOSSES,
                          "samples whose importance weight the dual clip capped at ratio_cap")
GRAD_NORM = _declare("grad_norm", "", Group.LOSSES, "gradient norm before clipping to max_grad_norm")
AUX_LOSS = _declare("aux_loss", "", Group.LOSSES, "auxiliary loss on the env's labels", when=When.WITH_AUX)
EXPLAINED_VARIANCE = _declare("explained_variance", "", Group.LOSSES,
                              "1 - Var(returns - values) / Var(returns) over the rollout's valid samples "
                              "(left out when the returns do not vary)", when=When.WITH_CRITIC)

# -- the update's data ----------------------------------------------------------------------------------
SAMPLES = _declare("samples", "samples", Group.PIPELINE, "valid env steps the update trained on", count=True)
TRAINED_ENV_STEPS = _declare("trained_env_steps", "env steps", Group.PIPELINE, "env steps trained on so far",
                             count=True)
STALENESS_MEAN = _declare("staleness_mean", "versions", Group.PIPELINE,
                          "mean of (learner version - acting version) over the trained samples", csv=True)
STALENESS_MAX = _declare("staleness_max", "versions", Group.PIPELINE, "largest staleness of a trained sample",
                         csv=True, count=True)
STALENESS_HIST = _declare("staleness_hist", "samples", Group.PIPELINE,
                          "trained samples per staleness 0, 1, ... since the previous row", scalar=False)
LEARN_S = _declare("learn_s", "s", Group.PIPELINE, "seconds the update took")
COLLECTIVE_S = _declare("collective_s", "s", Group.PIPELINE,
                        "seconds of the update (learn_s) learner rank 0 of the node spent in collectives with "
                        "the other ranks: the gradient all-reduces and the weight check, waits for the slowest "
                        "rank included", when=When.WITH_RANKS)

# -- the lanes, over the updates since the previous row ---------------------------------------------------
LANE_BUSY = {lane: _declare(f"{lane}_busy", "fraction", Group.LANES, f"share of the time the {lane} lane was busy"
                            + (" (per worker)" if lane == "sample" else ""), csv=True) for lane in LANES}
LANE_ITEMS_PER_S = {lane: _declare(f"{lane}_items_per_s", "items/s", Group.LANES,
                                   f"items the {lane} lane finished per second") for lane in LANES}
GPU_BUSY = _declare("gpu_busy", "fraction", Group.LANES, "share of the time any lane used the GPU",
                    when=When.ON_GPU)
PUBLISH_MS = _declare("publish_ms", "ms", Group.PIPELINE,
                        "mean time a weight version took to publish, over those reported since the previous row",
                        csv=True)
PUBLISH_MS_REPLICAS = _declare("publish_ms_replicas", "ms", Group.PIPELINE,
                                "per actor replica, the mean time until it had each version, over the same "
                                "versions (the replication plan's hops)", scalar=False)
QUEUE_DEPTH = _declare("queue_depth", "segments", Group.PIPELINE, "segments waiting in the trajectory queues",
                       csv=True, count=True)
WEIGHT_WAIT_S = _declare("weight_wait_s", "s", Group.PIPELINE,
                         "seconds the actors have waited at the staleness gate, in all (summed over replicas)",
                         csv=True)
ACTING_VERSION = _declare("acting_version", "versions", Group.PIPELINE,
                          "weight version the actors act with (the oldest of the replicas')", count=True)
DROPPED_EPISODES = _declare("dropped_episodes", "episodes", Group.PIPELINE,
                            "episodes lost to a replaced env worker, in all", csv=True, count=True)
REPLACED_WORKERS = _declare("replaced_workers", "workers", Group.PIPELINE, "env workers replaced, in all", csv=True,
                            count=True)

# -- the job's two VRAM pools ---------------------------------------------------------------------------
GPU_WEIGHT_BYTES = _declare("gpu_weight_bytes", "bytes", Group.PIPELINE,
                            "weight pool: weights, optimizer state and staging buffers", when=When.ON_GPU, count=True)
GPU_ACTIVATION_BYTES = _declare("gpu_activation_bytes", "bytes", Group.PIPELINE,
                                "activation pool: the allocators' peak beyond the weight pool", when=When.ON_GPU,
                                count=True)
GPU_WEIGHT_PEAK_BYTES = _declare("gpu_weight_peak_bytes", "bytes", Group.PIPELINE,
                                 "largest weight pool any row of the job reported so far", when=When.ON_GPU, count=True)
GPU_ACTIVATION_PEAK_BYTES = _declare("gpu_activation_peak_bytes", "bytes", Group.PIPELINE,
                                     "largest activation pool any row of the job reported so far (what its "
                                     "estimate and cap are compared with)", when=When.ON_GPU, count=True)
GPU_ACTIVATION_GROWING = _declare("gpu_activation_growing", "flag", Group.PIPELINE,
                                  "1 while the activation pool has grown at each of the last updates (memory "
                                  "creeping towards its cap), else 0", when=When.ON_GPU, count=True)
GPU_POOLS = {"weight_pool": (GPU_WEIGHT_BYTES, GPU_WEIGHT_PEAK_BYTES),
             "activation_pool": (GPU_ACTIVATION_BYTES, GPU_ACTIVATION_PEAK_BYTES)}
"""Each pool's name (as ``summary.json``'s ``gpu_memory`` and ``/v1/gpus`` name it) -> its row's keys:
the latest size and the largest so far."""

CSV_COLUMNS = tuple(m.name for m in METRICS.values() if m.csv)
"""The columns of ``metrics.csv``, in order."""


def as_written(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` as the job writes it: its counts as integers. Why: the lanes report every number as a
    float, and ``dvla metrics`` printed ``version`` 12.0 and ``env_steps`` 56384.0."""
    return {key: int(value) if key in METRICS and METRICS[key].count and isinstance(value, float)
            and value.is_integer() else value for key, value in row.items()}

# -- how readers judge a row ----------------------------------------------------------------------------
SUCCESS_MIN_EPISODES = 20
"""Episodes that must have ended before a row's success rate is shown. The first episodes to end are
the short, lucky ones (a ``reach`` run's first rows read 1.0 over 5 episodes), so a rate over fewer
says nothing: ``dvla top`` shows ``–`` with the count so far, ``dvla report`` draws no point, and the
job runner's progress line follows the same rule, through :func:`success_rate_of`."""


def success_rate_of(row: Mapping[str, Any]) -> float | None:
    """The row's success rate once at least :data:`SUCCESS_MIN_EPISODES` episodes have ended; None
    before (or when the row has none). A row without an episode count (written before rows carried
    one) is taken at its word."""
    rate, episodes = row.get(SUCCESS_RATE), row.get(EPISODES)
    if rate is None or (episodes is not None and episodes < SUCCESS_MIN_EPISODES):
        return None
    return float(rate)
