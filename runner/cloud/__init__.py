"""Renting verified hosts on vast.ai.

Layers, each importing only those above it::

    vast        the vast.ai API behind VastClient (the only importer of ``vastai``), errors
    offers      Requirements, search filters, ranking by performance per dollar, explain
    registry    local SQLite: instances runner created, machines that failed
    ssh         the ``ssh`` binary: keys, timeouts, per-instance known hosts
    probe       the one-round-trip host check and its verdict
    provision   rent(): search, create, wait, probe, destroy and fail over
    volumes     persistent volumes

Nothing here imports the CLI, ``rich`` or ``typer``; ``vastai`` is imported only when a
:class:`VastApi` is made.
"""

from __future__ import annotations

from runner.cloud.offers import NoOffersError, Ranking, Requirements, explain, search
from runner.cloud.probe import ProbeError, ProbeReport, Verdict, check, run_probe
from runner.cloud.provision import (
    Attempt,
    Rental,
    RentEvent,
    RentFailedError,
    Timeouts,
    VolumeChoice,
    destroy,
    is_runner_label,
    rent,
)
from runner.cloud.registry import Registry, state_dir
from runner.cloud.ssh import Ssh, SshError, SshTarget
from runner.cloud.vast import (
    ApiError,
    AuthError,
    CloudError,
    Instance,
    NoApiKeyError,
    Offer,
    OfferUnavailableError,
    RateLimitError,
    VastApi,
    VastClient,
    Volume,
)

__all__ = [
    "ApiError",
    "Attempt",
    "AuthError",
    "CloudError",
    "Instance",
    "NoApiKeyError",
    "NoOffersError",
    "Offer",
    "OfferUnavailableError",
    "ProbeError",
    "ProbeReport",
    "Ranking",
    "RateLimitError",
    "Registry",
    "RentEvent",
    "RentFailedError",
    "Rental",
    "Requirements",
    "Ssh",
    "SshError",
    "SshTarget",
    "Timeouts",
    "VastApi",
    "VastClient",
    "Verdict",
    "Volume",
    "VolumeChoice",
    "check",
    "destroy",
    "explain",
    "is_runner_label",
    "rent",
    "run_probe",
    "search",
    "state_dir",
]
