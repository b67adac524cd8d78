"""``from dvla import sdk``: the SDK in one namespace (clients, job handles, exceptions).

Why a re-export module: user code and the CLI import one name and find everything, while each piece
lives in its own small module (:mod:`dvla.client`, :mod:`dvla.aclient`, :mod:`dvla.errors`,
:mod:`dvla.config`). Imports no torch, numpy or dvlad.
"""

from dvla.aclient import AsyncClient, AsyncJob
from dvla.client import Client, Job
from dvla.config import Endpoint, resolve
from dvla.errors import (
    ApiError,
    Conflict,
    DaemonUnavailable,
    DvlaError,
    InvalidSpec,
    JobFailed,
    NotFound,
    PermissionDenied,
)

__all__ = ["ApiError", "AsyncClient", "AsyncJob", "Client", "Conflict", "DaemonUnavailable", "DvlaError",
           "Endpoint", "InvalidSpec", "Job", "JobFailed", "NotFound", "PermissionDenied", "resolve"]
