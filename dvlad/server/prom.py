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
from dvlad.server.gpu_jobs import jobs_on_gpus
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
        queued, seconds = self.daemon.last_pass
        yield GaugeMetricFamily("dvlad_schedule_pass_seconds", "Wall time of the last scheduling pass "
                                "(decided in a worker thread)", value=seconds)
        yield GaugeMetricFamily("dvlad_schedule_pass_queued", "Queued jobs the last scheduling pass considered",
                                value=queued)
        yield GaugeMetricFamily("dvlad_event_loop_lag_max_seconds", "Longest delay of the event loop's "
                                "50 ms timer over the last 15 s", value=self.daemon.loop_lag.worst())
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
        yield from self.pools()
        yield from self.bases()

    def bases(self) -> Iterator[GaugeMetricFamily]:
        """Each shared base's holder: the jobs mapping it and its bytes (once built)."""
        labels = ["device", "base"]
        jobs = GaugeMetricFamily("dvlad_shared_base_jobs", "Jobs mapping a shared base model", labels=labels)
        size = GaugeMetricFamily("dvlad_shared_base_bytes", "Bytes of a shared base model, held once on its "
                                 "device by its holder process", labels=labels)
        for holder in list(self.daemon.supervisor.bases.holders.values()):
            _, device, base = holder.key.split("|")
            jobs.add_metric([device, base], len(holder.jobs))
            if manifest := holder.manifest():
                size.add_metric([device, base], manifest["bytes"])
        yield from (jobs, size)

    def pools(self) -> Iterator[GaugeMetricFamily]:
        """Each job's two pools on each of its GPUs: size, peak, budget and estimate (bytes; a figure
        the job or dvlad does not know is left out), and whether the activation pool keeps growing."""
        labels = ["job", "user", "name", "gpu", "pool"]
        families = {key: GaugeMetricFamily(f"dvlad_job_gpu_pool_{key}_bytes", meaning, labels=labels)
                    for key, meaning in (
            ("used", "A job's GPU memory pool as its newest metric row reports it"),
            ("peak", "The largest size a job's GPU memory pool reached so far"),
            ("budget", "A job's budget (cap) for a GPU memory pool, from resources.weight_pool/activation_pool"),
            ("estimate", "dvlad's estimate of a job's GPU memory pool peak, from its spec"))}
        growing = GaugeMetricFamily("dvlad_job_gpu_activation_growing", "1 while a job's activation pool has "
                                    "grown at each of its last updates", labels=["job", "user", "name", "gpu"])
        for gpu, jobs in sorted(jobs_on_gpus(self.daemon).items()):
            for job, memory in jobs:
                key = [str(job.id), job.user, job.name, str(gpu)]
                for pool in m.GPU_POOLS:
                    for figure, family in families.items():
                        if memory[pool][figure] is not None:
                            family.add_metric([*key, pool.removesuffix("_pool")], memory[pool][figure])
                growing.add_metric(key, float(memory["activation_growing"]))
        yield from (*families.values(), growing)


def registry_for(daemon: Daemon, state_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon, state_dir))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
