"""Machine commands: ``nodes``, ``topo`` (the GPU link matrix and NVLink islands), ``gpus`` (live stats).

Why ``topo`` recomputes nothing on the daemon: it prints NVML's record (``/v1/topology``) the way
``nvidia-smi topo -m`` does, classified by :mod:`dvla.topology`, so a user sees what placement sees.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from dvla import topology as topo_
from dvla.cli import output
from dvla.cli.main import State, connection_options, json_option, pass_state
from dvla.top.snapshot import gpu_jobs


@click.command(epilog="""\b
Examples:
  dvla nodes
  dvla nodes --json | jq '.[0].free_cpu_slots'""")
@json_option
@connection_options
@pass_state
def nodes(state: State, as_json: bool) -> None:
    """The nodes: GPUs, CPU slots, running jobs, CPU and RAM; with federation, every peer too, its state
    (up/down) and the age of its last heartbeat."""
    rows = state.client().nodes()
    if as_json:
        output.print_json(rows)
        return
    con = output.console()
    summary = output.table("NODE", "STATE", "HEARTBEAT", "GPUS FREE", "CPU SLOTS FREE", "CPU", "RAM",
                           "RUNNING JOBS", "GPU SOURCE", flex_last=True)
    for node in rows:
        summary.add_row(node["name"], _state(node), _age(node.get("last_heartbeat_age_s", 0.0)),
                        f"{sum(1 for g in node['gpus'] if g['free'])}/{len(node['gpus'])}",
                        f"{node['free_cpu_slots']}/{node['cpu_slots']}", _cpu(node), _ram(node),
                        str(node["running_jobs"]), node["gpu_source"])
    con.print(summary)
    for node in rows:
        if node["gpus"]:
            con.print()
            gpus = output.table("GPU", "NAME", "MEMORY GiB", "STATE", title=node["name"])
            for g in node["gpus"]:
                gpus.add_row(str(g["index"]), g["name"], output.gib(g["memory_total"]),
                             "[green]free[/]" if g["free"] else "[cyan]held[/]")
            con.print(gpus)


def _state(node: dict[str, Any]) -> str:
    return "[green]up[/]" if node.get("state", "up") == "up" else "[red]down[/]"


def _age(seconds: float | None) -> str:
    """The age of a node's last heartbeat (this node's own: ``-``)."""
    if seconds is None:
        return "never"
    return "-" if seconds == 0 else f"{seconds:.1f} s ago"


def _cpu(node: dict[str, Any]) -> str:
    busy, cores = node.get("cpu_percent"), node.get("cpu_count")
    return f"{'?' if busy is None else f'{busy:.0f}%'} of {cores or '?'}"


def _ram(node: dict[str, Any]) -> str:
    used, total = node.get("ram_used"), node.get("ram_total")
    return f"{output.gib(used)}/{output.gib(total)} GiB" if used is not None and total else "?"


def _heading(con: Console, host: str, source: str, gpus: list[Any]) -> bool:
    """The node line of ``topo`` and ``gpus``; False (having said so) when the node has no GPU to show."""
    con.print(f"[bold]{host or 'node'}[/] ({source})")
    if not gpus:
        con.print("no GPUs on this node")
    return bool(gpus)


def _topology_view(topology: dict[str, Any]) -> dict[str, Any]:
    indices, matrix = topo_.link_matrix(topology)
    return {"host": topology.get("host", ""), "source": topology.get("source", ""), "gpus": indices,
            "links": matrix, "islands": topo_.islands(topology)}


@click.command(epilog="""\b
Examples:
  dvla topo
  dvla topo --json | jq .islands

\b
Links as nvidia-smi topo -m names them: X (self), NV# (# bonded NVLinks), PIX, PXB, PHB, NODE,
SYS (PCIe paths, nearest first). An island is a group of GPUs joined by NVLink. A job of several
GPUs is placed on the free set whose pairs are best linked: NVLink (more links first) above any
PCIe path, then the nearest PCIe path; ties to the lowest indices.""")
@json_option
@connection_options
@pass_state
def topo(state: State, as_json: bool) -> None:
    """The GPU link matrix of the daemon's node and its NVLink islands."""
    topology = state.client().topology()
    view = _topology_view(topology)
    if as_json:
        output.print_json(view)
        return
    con = output.console()
    if not _heading(con, view["host"], f"topology from {view['source']}", view["gpus"]):
        return
    names = {d["index"]: d.get("name", "") for d in topology.get("devices", [])}
    grid = output.table("", *(f"GPU{i}" for i in view["gpus"]), "NAME")
    for i, row in zip(view["gpus"], view["links"], strict=True):
        grid.add_row(f"[bold]GPU{i}[/]", *(f"[green]{c}[/]" if c.startswith("NV") else c for c in row), names[i])
    con.print(grid)
    used = {"NV#" if c.startswith("NV") else c for row in view["links"] for c in row}
    con.print("\nLegend:")
    for symbol, meaning in topo_.LEGEND.items():
        if symbol in used:
            con.print(f"  {symbol:<5} {meaning}")
    islands = "  ".join("{" + ", ".join(f"GPU{i}" for i in group) + "}" for group in view["islands"])
    con.print(f"\nNVLink islands: {islands}")


@click.command(epilog="""\b
Examples:
  dvla gpus
  dvla gpus --json | jq '.gpus[] | {index, utilization, jobs}'

On a node without NVML (a replayed topology, or no driver) the live fields are "-".
Pool figures in GiB: USED is the job's newest metric row, PEAK the largest so far, BUDGET
its resources.weight_pool / activation_pool ("-": no cap), ESTIMATE what dvlad estimated
from the spec ("-": none for its model).""")
@json_option
@connection_options
@pass_state
def gpus(state: State, as_json: bool) -> None:
    """Live GPU stats and the jobs on each GPU with their memory pools.

    Per GPU: utilisation, memory used/total, temperature, power draw/limit, its jobs. Then per job
    on a GPU: its weight and activation pools against their budgets and dvlad's estimates."""
    stats = state.client().gpus()
    if as_json:
        output.print_json(stats)
        return
    con = output.console()
    if not _heading(con, stats.get("host", ""), f"source {stats['source']}", stats["gpus"]):
        return
    grid = output.table("GPU", "NAME", "UTIL", "MEMORY GiB", "TEMP", "POWER W", "JOBS")
    pools = output.table("GPU", "JOB", "WEIGHT USED/BUDGET", "ACT USED/BUDGET", "ACT PEAK", "ACT ESTIMATE",
                         "WEIGHT ESTIMATE", title="jobs on the GPUs")
    for g in stats["gpus"]:
        memory = f"{output.gib(g['memory_used'])}/{output.gib(g['memory_total'])}"
        power = f"{output.value(g['power_draw'])}/{output.value(g['power_limit'])}"
        jobs = gpu_jobs(g)
        grid.add_row(str(g["index"]), g["name"], output.value(g["utilization"], "%"), memory,
                     output.value(g["temperature"], "°C"), power, ", ".join(j.label for j in jobs) or output.NONE)
        for job in jobs:
            w, a = job.weight, job.activation
            pools.add_row(str(g["index"]), job.label, f"{output.gib(w.used)}/{output.gib(w.budget)}",
                          f"{output.gib(a.used)}/{output.gib(a.budget)}" + (" ↑" if job.growing else ""),
                          output.gib(a.peak), output.gib(a.estimate), output.gib(w.estimate))
    con.print(grid)
    if pools.row_count:
        con.print()
        con.print(pools)


COMMANDS = (nodes, topo, gpus)
