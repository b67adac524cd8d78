"""Names a job's metric rows share between the engine that writes them, the daemon that exports
them and the SDK that draws them (``dvla top``, ``dvla report``).

Why a module of its own: the engine, ``/metrics`` and the monitor must agree on these strings, and
the SDK is the one package all three import (it stays free of torch and of the daemon)."""

from __future__ import annotations

LANES = ("sample", "infer", "learn", "distribute")
"""A job's four lanes, in the order the data flows (see DESIGN.md); each reports
``{lane}_busy`` and ``{lane}_items_per_s``."""
WEIGHT_KEY, ACTIVATION_KEY = "gpu_weight_bytes", "gpu_activation_bytes"
"""The keys a GPU job reports its two VRAM pools under (bytes per GPU of the job)."""
