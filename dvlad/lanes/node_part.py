"""This job process's place in a job that spans several servers (``placement.nodes`` > 1).

Why environment variables: a multi-node job is the same job file run once per node, each run a
*node part* that plans and runs its own layout on its own devices exactly as a one-node job does;
only its learner ranks join one process group with the other nodes' ranks. The coordinating
daemon (``dvlad/fed/``) chooses the rendezvous and each node's share of the global ranks and
hands them to every part it starts in these variables, so the job runner keeps its one command
line (``python -m dvlad.runtime.job JOB.toml --output-dir DIR``) and can be started by hand too
(tests/test_node_parts.py, scripts/bench_fed.py).

What crosses the network, and when: the learner ranks' collectives only (per minibatch the flat
gradient all-reduce and a sample count; per update one agreement vector and a two-number weight
digest; once a final count). Every rank holds the same weights after each update, so each node's
local rank 0 publishes a version from its own copy into its node's weight plane: a weight version
crosses the network zero times, and no tensor but gradients and counters ever does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dvla import stops
from dvla.spec import JobSpec
from dvlad.ports import free_port

NODES = "DVLA_NODES"
NODE_RANK = "DVLA_NODE_RANK"
RENDEZVOUS = "DVLA_FED_RENDEZVOUS"
RANK_OFFSET = "DVLA_RANK_OFFSET"
WORLD = "DVLA_WORLD"
VARIABLES = (NODES, NODE_RANK, RENDEZVOUS, RANK_OFFSET, WORLD)
"""What the coordinator sets for each part it starts (docs/federation.md)."""


@dataclass(frozen=True)
class NodePart:
    """One node's part of a job: node ``node`` of ``nodes``, whose learner ranks are the global
    ranks ``rank_offset`` … ``rank_offset + local ranks - 1`` of ``world``, met at ``rendezvous``
    (``tcp://HOST:PORT``, torch.distributed's TCP init method). A one-node job is the part
    ``NodePart.alone(ranks, rendezvous)``: node 0 of 1, offset 0."""

    nodes: int
    node: int
    rendezvous: str
    rank_offset: int
    world: int

    @classmethod
    def alone(cls, ranks: int, rendezvous: str) -> NodePart:
        """The whole job on this one node: ``ranks`` learner ranks meeting at ``rendezvous``."""
        return cls(1, 0, rendezvous, 0, ranks)

    @classmethod
    def from_env(cls, nodes: int, environ: Mapping[str, str] = os.environ) -> NodePart | None:
        """The part the coordinator described in ``environ`` for a job of ``nodes`` nodes (its
        ``placement.nodes``); None for a one-node job started without them. ValueError, naming the
        variable, when they are missing, malformed or disagree with the job."""
        given = [name for name in VARIABLES if name in environ]
        if not given:
            if nodes > 1:
                raise ValueError(f"placement.nodes = {nodes}: this process runs one node's part of the job, and "
                                 f"the coordinating dvlad sets {', '.join(VARIABLES)} for it (docs/federation.md); "
                                 "none is set")
            return None
        missing = [name for name in VARIABLES if name not in environ]
        if missing:
            raise ValueError(f"a node part needs all of {', '.join(VARIABLES)}; missing {', '.join(missing)}")
        part = cls(_int(environ, NODES), _int(environ, NODE_RANK), environ[RENDEZVOUS].strip(),
                   _int(environ, RANK_OFFSET), _int(environ, WORLD))
        if part.nodes != nodes:
            raise ValueError(f"{NODES} = {part.nodes} but the job file says placement.nodes = {nodes}")
        if not 0 <= part.node < part.nodes:
            raise ValueError(f"{NODE_RANK} = {part.node} is not a node of 0 … {part.nodes - 1}")
        if not part.rendezvous.startswith("tcp://") or ":" not in part.rendezvous[len("tcp://"):]:
            raise ValueError(f"{RENDEZVOUS} = {part.rendezvous!r} is not tcp://HOST:PORT")
        if not 0 <= part.rank_offset < part.world:
            raise ValueError(f"{RANK_OFFSET} = {part.rank_offset} is not a rank of {WORLD} = {part.world}")
        return part

    def environ(self) -> dict[str, str]:
        """The variables that describe this part to the job process the coordinator starts for it."""
        return {NODES: str(self.nodes), NODE_RANK: str(self.node), RENDEZVOUS: self.rendezvous,
                RANK_OFFSET: str(self.rank_offset), WORLD: str(self.world)}

    def check(self, ranks: int) -> None:
        """ValueError unless this node's ``ranks`` learner ranks fit where the coordinator put them."""
        if self.rank_offset + ranks > self.world:
            raise ValueError(f"node {self.node} plans {ranks} learner rank(s) from global rank {self.rank_offset}, "
                             f"past {WORLD} = {self.world}: the coordinator counted another layout")

    def global_rank(self, local: int) -> int:
        """The process-group rank of this node's learner rank ``local``."""
        return self.rank_offset + local

    @property
    def leads(self) -> bool:
        """This node holds global rank 0: it writes the job's checkpoints and its metric rows."""
        return self.rank_offset == 0

    def own(self, spec: JobSpec) -> JobSpec:
        """``spec`` as this node runs it: node 0 with the job's seed, node k with a seed of its own drawn
        from (seed, k), so that no two nodes sample the same episodes or actions (the learner ranks
        start from rank 0's weights whatever seed built theirs)."""
        if self.node == 0:
            return spec
        seed = int(np.random.SeedSequence([spec.job.seed, self.node]).generate_state(1)[0] >> 1)
        return dataclasses.replace(spec, job=dataclasses.replace(spec.job, seed=seed))

    def others(self) -> str:
        """Whose ranks a failed collective waited for, as the failure names them: ``node 1's ranks``
        (two nodes), ``the ranks of one of nodes 0, 2``, or in a one-node job another learner rank."""
        rest = [k for k in range(self.nodes) if k != self.node]
        if len(rest) == 1:
            return f"node {rest[0]}'s ranks"
        return f"the ranks of one of nodes {', '.join(map(str, rest))}" if rest else "another learner rank"


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"{name} = {environ[name]!r} is not an integer") from None


def loopback(ranks: Sequence[int]) -> list[NodePart]:
    """The parts of a job whose nodes, with ``ranks[k]`` learner ranks on node k, all run on this
    machine and meet on 127.0.0.1 (tests/test_node_parts.py, scripts/bench_fed.py)."""
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    offsets = [sum(ranks[:k]) for k in range(len(ranks))]
    return [NodePart(len(ranks), k, rendezvous, offsets[k], sum(ranks)) for k in range(len(ranks))]


class NodeState:
    """What a node's main process tells its learner ranks for their agreement before each update
    (:meth:`dvlad.lanes.ranks.LearnerRanks.agree`): the env steps its actors sampled, why it stops,
    whether it is failing. Three integers in shared memory, written by the main process between
    actor steps (and before it sets the stop event), read by the ranks; no lock: each is one aligned
    word, and a reader a step behind only sees the count of a moment before."""

    def __init__(self, ctx) -> None:
        self._values = ctx.RawArray("q", 3)

    def tell(self, env_steps: int, stop_reason: str | None = None, failed: bool = False) -> None:
        """The node's env steps so far; with the stop event about to be set, why (None: failing)."""
        self._values[0] = int(env_steps)
        if stop_reason is not None:
            self._values[1] = 1 + stops.STOP_REASONS.index(stop_reason)
        if failed:
            self._values[2] = 1

    @property
    def env_steps(self) -> int:
        return int(self._values[0])

    @property
    def stop_reason(self) -> str | None:
        return stops.STOP_REASONS[self._values[1] - 1] if self._values[1] else None

    @property
    def failed(self) -> bool:
        return bool(self._values[2])
