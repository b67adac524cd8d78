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
        if self.daemon.federation is not None:
            yield from self.federation()

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

    def federation(self) -> Iterator[GaugeMetricFamily]:
        """Each peer node: up, its heartbeat's age; the leases this node holds for coordinators and those
        its own multi-node jobs hold on peers (by the other node, 0 for a peer with none); its jobs coordinated."""
        federation = self.daemon.federation
        peers = federation.peers
        up = GaugeMetricFamily("dvlad_fed_node_up", "1 while a peer node's heartbeats arrive (younger than "
                               "federation.down_after_s), else 0", labels=["node"])
        age = GaugeMetricFamily("dvlad_fed_heartbeat_age_seconds", "Seconds since a peer node's last heartbeat "
                                "(left out before the first)", labels=["node"])
        nodes = [peer.name or peer.addr for peer in peers.peers.values()]
        for node, peer in zip(nodes, peers.peers.values(), strict=True):
            up.add_metric([node], float(peers.up(peer)))
            if (seconds := peer.age()) is not None:
                age.add_metric([node], seconds)
        yield from (up, age)
        granted = dict.fromkeys(nodes, (0, 0, 0))
        for lease in self.daemon.leases.held.values():
            _add_lease(granted, lease.coordinator, len(lease.gpu_ids), lease.cpus)
        held = dict.fromkeys(nodes, (0, 0, 0))
        for job_id, parts in list(federation.coordinator.jobs.items()):
            job = self.daemon.store.get(job_id)
            for part in parts:
                if part.state != "released":
                    _add_lease(held, part.node, job.gpus if job else 0, job.cpus if job else 0)
        for direction, table, whose in (("granted", granted, "this node holds for a coordinator's multi-node job "
                                         "(node: the coordinator)"),
                                        ("held", held, "this node's multi-node jobs hold on a peer (node: the peer)")):
            for suffix, meaning, i in (("", "Leases", 0), ("_gpus", "GPUs of the leases", 1),
                                       ("_cpu_slots", "CPU slots of the leases", 2)):
                family = GaugeMetricFamily(f"dvlad_fed_leases_{direction}{suffix}", f"{meaning} {whose}",
                                           labels=["node"])
                for node, counts in sorted(table.items()):
                    family.add_metric([node], counts[i])
                yield family
        yield GaugeMetricFamily("dvlad_fed_jobs_coordinated", "Multi-node jobs this node coordinates that still "
                                "have parts or leases on peers", value=len(federation.coordinator.jobs))


def _add_lease(table: dict[str, tuple[int, int, int]], node: str, gpus: int, cpus: int) -> None:
    """Count one lease of ``gpus`` GPUs and ``cpus`` CPU slots for ``node`` (leases, GPUs, CPU slots)."""
    leases, total_gpus, total_cpus = table.get(node, (0, 0, 0))
    table[node] = (leases + 1, total_gpus + gpus, total_cpus + cpus)


def registry_for(daemon: Daemon, state_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon, state_dir))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
