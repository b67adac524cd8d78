"""lanes of the D-VLA engine."""
