"""Dataset tools: read ``torch.save`` headers without torch, check and synthesise datasets.

Nothing here imports torch at module level; only :func:`synth_franka` needs it.
"""

from __future__ import annotations

from runner.data.franka import (
    ACTION_DIM,
    STATE_DIM,
    FrankaReport,
    Problem,
    check_franka,
    synth_franka,
)
from runner.data.torchfile import TensorInfo, load_array, read_tensor_info

__all__ = [
    "ACTION_DIM",
    "STATE_DIM",
    "FrankaReport",
    "Problem",
    "TensorInfo",
    "check_franka",
    "load_array",
    "read_tensor_info",
    "synth_franka",
]
