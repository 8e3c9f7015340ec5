"""Checkpoints on the Hugging Face Hub: discovery, pushing beside training, rotation, pull.

    client     HubClient (the only module that imports huggingface_hub, lazily), HubError
    discovery  Scanner: complete checkpoints in the harness, LeRobot, DINO WM, openpi layouts
    pusher     Pusher (background thread in the agent), push_checkpoint, pull_latest, retag;
               ``python -m runner.hub.pusher RUN_DIR --repo OWNER/NAME`` runs one standalone
    rotation   keep the newest K locally; delete only what the Hub confirmed

The names below are imported on first use (so ``python -m runner.hub.pusher`` runs the module
once, and importing this package costs nothing); huggingface_hub itself only when a Hub call
is made, so ``runner --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.hub.client import HubApi, HubAuthError, HubClient, HubError, RemoteFile, redact
    from runner.hub.discovery import (
        LAYOUTS,
        LocalCheckpoint,
        Scan,
        Scanner,
        check_file,
        inspect_path,
    )
    from runner.hub.pusher import (
        STATE_FILE,
        PollResult,
        PushConfig,
        Pusher,
        PushResult,
        RemoteCheckpoint,
        RetagResult,
        pull_checkpoint,
        pull_latest,
        push_checkpoint,
        remote_checkpoints,
        remote_path,
        retag,
    )
    from runner.hub.rotation import plan_rotation, rotate

_WHERE = {
    "client": ("HubApi", "HubAuthError", "HubClient", "HubError", "RemoteFile", "redact"),
    "discovery": ("LAYOUTS", "LocalCheckpoint", "Scan", "Scanner", "check_file", "inspect_path"),
    "pusher": (
        "STATE_FILE",
        "PollResult",
        "PushConfig",
        "PushResult",
        "Pusher",
        "RemoteCheckpoint",
        "RetagResult",
        "pull_checkpoint",
        "pull_latest",
        "push_checkpoint",
        "remote_checkpoints",
        "remote_path",
        "retag",
    ),
    "rotation": ("plan_rotation", "rotate"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "LAYOUTS",
    "STATE_FILE",
    "HubApi",
    "HubAuthError",
    "HubClient",
    "HubError",
    "LocalCheckpoint",
    "PollResult",
    "PushConfig",
    "PushResult",
    "Pusher",
    "RemoteCheckpoint",
    "RemoteFile",
    "RetagResult",
    "Scan",
    "Scanner",
    "check_file",
    "inspect_path",
    "plan_rotation",
    "pull_checkpoint",
    "pull_latest",
    "push_checkpoint",
    "redact",
    "remote_checkpoints",
    "remote_path",
    "retag",
    "rotate",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'runner.hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"runner.hub.{module}"), name)
    globals()[name] = value
    return value
