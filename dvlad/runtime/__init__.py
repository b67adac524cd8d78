"""runtime of the D-VLA engine."""
