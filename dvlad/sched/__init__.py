"""Scheduling: pure decisions from (queue, cluster state, limits); the server acts on them."""

from dvlad.sched.policy import Capacity, Cluster, Decision, Limit, Limits, Plan, QueuedJob, Usage, plan, schedule

__all__ = ["Capacity", "Cluster", "Decision", "Limit", "Limits", "Plan", "QueuedJob", "Usage", "plan", "schedule"]
