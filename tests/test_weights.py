"""The weight plane: a published version reaches the actor whole and changes its actions."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import torch

from dvlad.lanes.distribute import Distributor
from dvlad.lanes.weights import Route, WeightPlane
from dvlad.policies import make_policy
from dvlad.policies.base import ObsBatch, flatten_parameters
from dvlad.spaces import EnvSpec

SPEC = EnvSpec(cameras={"image": (16, 16)}, proprio_dim=4, max_episode_steps=10)


def _policy():
    torch.manual_seed(0)
    p = make_policy("tiny-vla", SPEC, d_model=16, layers=1, heads=2, patch_grid=2)
    return p, flatten_parameters(p)


def _obs(policy) -> ObsBatch:
    g = torch.Generator().manual_seed(1)
    return ObsBatch(images={"image": torch.randint(0, 255, (4, 16, 16, 3), dtype=torch.uint8, generator=g)},
                    proprio=torch.randn(4, 4, generator=g), instruction=policy.tokenize(["touch the red cube"] * 4))


def test_published_version_reaches_actor_and_changes_actions():
    ctx = mp.get_context("spawn")
    _learner, learner_flat = _policy()
    actor, actor_flat = _policy()
    plane = WeightPlane.create(ctx, learner_flat.numel(), ["cpu", "cpu"])
    try:
        obs = _obs(actor)
        with torch.no_grad():
            before = actor.act(obs, deterministic=True).actions.clone()
            learner_flat.add_(torch.randn_like(learner_flat) * 0.5)  # a learner step, drastically
            assert plane.swap_into(actor_flat, -1) == -1  # nothing published yet
            dist = Distributor(plane)
            dist.publish(learner_flat, 1)
            dist.close()
            assert plane.wait_for(1, timeout=5)
            assert plane.swap_into(actor_flat, 0) == 1
            assert torch.equal(actor_flat, learner_flat)  # the whole version, bit for bit
            after = actor.act(obs, deterministic=True).actions
            assert not torch.equal(before, after)  # and the actor now acts with it
            assert plane.swap_into(actor_flat, 1) == 1  # no newer version: no copy
            second = torch.empty_like(actor_flat)
            assert plane.swap_into(second, -1, replica=1) == 1  # every replica got it
            assert torch.equal(second, learner_flat)
    finally:
        plane.close()


def test_versions_alternate_staging_buffers_so_a_reader_never_sees_a_mix():
    ctx = mp.get_context("spawn")
    plane = WeightPlane.create(ctx, 1000)
    try:
        for v in range(1, 6):
            plane.publish(torch.full((1000,), float(v)), v)
            got = torch.empty(1000)
            assert plane.swap_into(got, v - 1) == v
            assert (got == v).all()
        assert set(plane.arrays["slot_version"][0].tolist()) == {4, 5}  # the two newest, one per buffer
    finally:
        plane.close()


def test_a_version_follows_its_routes_through_the_replicas_that_got_it_first():
    """A tree: the publisher feeds replica 0 only, which feeds 1 and 2, and 1 feeds 3 (a plan's routes)."""
    ctx = mp.get_context("spawn")
    plane = WeightPlane.create(ctx, 1000, ["cpu"] * 4)
    routes = [Route(None, 0), Route(0, 1), Route(0, 2), Route(1, 3)]
    try:
        for v in (1, 2, 3):
            published = plane.publish(torch.full((1000,), float(v)), v, routes)
            assert sorted(published.replica_seconds) == [0, 1, 2, 3]
            assert published.seconds >= max(published.replica_seconds.values()) >= 0
            for r in range(4):
                got = torch.empty(1000)
                assert plane.swap_into(got, v - 1, replica=r) == v and (got == v).all()
    finally:
        plane.close()


def _wait_for_a_version_that_never_comes(handle, attached) -> None:
    plane = WeightPlane.attach(handle)
    attached.set()
    plane.wait_for(10**9, timeout=600)


def test_an_actor_killed_while_it_waits_for_weights_never_blocks_the_publisher():
    """A node's process killed with its actor asleep on the plane (seen in a 2-node job): the learner
    must publish on, and reach the ranks' agreement that says the node failed."""
    ctx = mp.get_context("spawn")
    plane = WeightPlane.create(ctx, 1000)
    attached = ctx.Event()
    sleeper = ctx.Process(target=_wait_for_a_version_that_never_comes, args=(plane.handle, attached))
    try:
        sleeper.start()
        assert attached.wait(timeout=60)
        plane.publish(torch.ones(1000), 1)  # a ring it wakes to, and sleeps again
        time.sleep(0.5)
        sleeper.kill()
        sleeper.join(timeout=30)
        published = []
        publisher = threading.Thread(target=lambda: published.append(plane.publish(torch.full((1000,), 2.0), 2)),
                                     daemon=True)
        publisher.start()
        publisher.join(timeout=30)
        assert published, "the publication hung on an actor that died waiting"
        assert plane.wait_for(2, timeout=0) and not plane.wait_for(3, timeout=0.05)
    finally:
        plane.close()
