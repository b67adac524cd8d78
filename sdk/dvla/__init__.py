"""dvla: the light D-VLA client. Imports no torch, so it installs on a laptop."""

__version__ = "0.1.0"
