"""dvlad: the D-VLA daemon and its engine (lanes, RL, environments, policies)."""
