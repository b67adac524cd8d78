"""The rolling episode statistics that every metrics row reports (success rate, return, length)."""

from __future__ import annotations

import pytest

from dvlad.lanes.episodes import EpisodeStats


def test_a_grpo_rollout_is_counted_whole_whatever_order_its_episodes_ended_in():
    """Successes end first; a window filled in end order would hold only the timeouts."""
    envs = 128
    ended: dict[int, tuple[float, bool, int]] = {}
    for env in [*range(0, envs, 16), *(e for e in range(envs) if e % 16)]:  # 8 successes end first
        success = env % 16 == 0
        ended[env] = (1.0 if success else 0.0, success, 12 if success else 40)
    stats = EpisodeStats(window=envs)
    stats.add_rollout(ended)
    summary = stats.summary()
    assert summary["episodes"] == envs
    assert summary["success_rate"] == pytest.approx(8 / envs)
    assert summary["episode_length"] == pytest.approx((8 * 12 + 120 * 40) / envs)


def test_the_window_keeps_the_latest_episodes():
    stats = EpisodeStats(window=3)
    for i in range(5):
        stats.add(float(i), i >= 3, 10 + i)
    summary = stats.summary()
    assert summary["episodes"] == 5
    assert summary["success_rate"] == pytest.approx(2 / 3)
    assert summary["episode_return"] == pytest.approx(3.0)  # episodes 2, 3, 4
    assert EpisodeStats().summary() == {"episodes": 0}
