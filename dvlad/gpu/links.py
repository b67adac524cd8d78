"""How well two GPUs of this node are linked, as a number placement can compare.

Why a number: the scheduler (:mod:`dvlad.sched`) is pure and knows nothing of NVML; it sums
``link_score(a, b)`` over the pairs of each candidate GPU set and takes the highest. The record is
read by :mod:`dvla.topology`, the same functions ``dvla topo`` prints with, so what a user sees as
``NV#`` or ``PIX`` is what placement prefers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dvla.topology import PCIE_LEVELS, nvlink_counts

NVLINK = 100.0
"""The score of a pair joined by NVLink, plus one per bonded link: above every PCIe path."""
FARTHEST = max(PCIE_LEVELS)
"""NVML's level of the farthest PCIe path (SYS); a pair scores ``FARTHEST - level``, so nearer is
higher and SYS, or a level NVML did not give, scores 0."""


def pair_scores(topology: dict[str, Any]) -> dict[frozenset[int], float]:
    """The score of every pair of GPUs the record describes (see the module constants)."""
    scores: dict[frozenset[int], float] = {}
    for pair in topology.get("pairs", []):
        level = pair.get("common_ancestor")
        near = FARTHEST - level if isinstance(level, int) and level in PCIE_LEVELS else 0
        scores[frozenset((pair["a"], pair["b"]))] = float(near)
    for pair, links in nvlink_counts(topology).items():
        scores[pair] = NVLINK + links
    return scores


def link_score(topology: dict[str, Any]) -> Callable[[int, int], float]:
    """``Cluster.link_score`` for this node: computed once, looked up per pair."""
    scores = pair_scores(topology)
    return lambda a, b: scores.get(frozenset((a, b)), 0.0)
