"""``/metrics``: Prometheus text from the store, NVML and each running job's metrics.jsonl.

Why a collector that reads at scrape time: nothing to keep in sync; a scrape sees the store and the
jobs' last rows as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dvla import metric_names as m
from dvlad.runtime.jobfiles import metrics_rows
from dvlad.runtime.launch import run_dir
from dvlad.segments import count, owner_prefix
from dvlad.server.core import Daemon
from dvlad.store import State

REGISTRY = web.AppKey("prometheus_registry", CollectorRegistry)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class DaemonCollector(Collector):
    def __init__(self, daemon: Daemon, state_dir: Path):
        self.daemon, self.state_dir = daemon, state_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.daemon.store.counts()
        yield GaugeMetricFamily("dvlad_queue_length", "Jobs waiting to be placed", value=counts[State.QUEUED])
        by_state = GaugeMetricFamily("dvlad_jobs", "Jobs by state", labels=["state"])
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        supervisor = self.daemon.supervisor
        live = count(owner_prefix(supervisor.shm_owner))
        yield GaugeMetricFamily("dvlad_shm_segments", "/dev/shm segments of this daemon's jobs", value=live.count)
        yield GaugeMetricFamily("dvlad_shm_bytes", "Bytes in /dev/shm segments of this daemon's jobs", value=live.bytes)
        yield CounterMetricFamily("dvlad_shm_reclaimed_segments", "/dev/shm segments of ended jobs removed",
                                  value=supervisor.reclaimed.count)
        yield CounterMetricFamily("dvlad_shm_reclaimed_bytes", "Bytes of /dev/shm segments of ended jobs removed",
                                  value=supervisor.reclaimed.bytes)
        util = GaugeMetricFamily("dvlad_gpu_utilization_percent", "GPU utilisation (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("dvlad_gpu_memory_used_bytes", "GPU memory used (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("dvlad_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
        for gpu in self.daemon.inventory.sample():
            for family, key in ((util, "utilization"), (used, "memory_used"), (total, "memory_total")):
                if gpu[key] is not None:
                    family.add_metric([str(gpu["index"])], gpu[key])
        yield from (util, used, total)
        labels = ["job", "user", "name"]
        steps = GaugeMetricFamily("dvlad_job_env_steps_per_second", "Sample-lane throughput", labels=labels)
        busy = GaugeMetricFamily("dvlad_job_lane_busy_ratio", "Busy fraction per lane", labels=[*labels, "lane"])
        stale = GaugeMetricFamily("dvlad_job_staleness_mean", "Mean policy staleness (versions)", labels=labels)
        stale_max = GaugeMetricFamily("dvlad_job_staleness_max", "Max policy staleness (versions)", labels=labels)
        depth = GaugeMetricFamily("dvlad_job_queue_depth", "Trajectory-queue depth (segments)", labels=labels)
        for job in self.daemon.store.list(states=frozenset({State.RUNNING, State.CANCELLING}), limit=1 << 30):
            rows = metrics_rows(run_dir(self.state_dir, job.id) / "metrics.jsonl", last=1)
            if not rows:
                continue
            row, key = rows[-1], [str(job.id), job.user, job.name]
            for family, field in ((steps, m.ENV_STEPS_PER_S), (stale, m.STALENESS_MEAN),
                                  (stale_max, m.STALENESS_MAX), (depth, m.QUEUE_DEPTH)):
                if isinstance(row.get(field), int | float):
                    family.add_metric(key, row[field])
            for lane, field in m.LANE_BUSY.items():
                if isinstance(row.get(field), int | float):
                    busy.add_metric([*key, lane], row[field])
        yield from (steps, busy, stale, stale_max, depth)


def registry_for(daemon: Daemon, state_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon, state_dir))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
