"""Names of every environment variable runner reads or sets, in one place.

They are listed in ``runner --help``; tests clear them so nothing leaks in from
the developer's own shell.
"""

from __future__ import annotations

# The harness owns the names it reads, since training images may use it alone:
# ENV_RUN_DIR is the folder of one run (heartbeat, metrics, events, logs, stack
# dumps, checkpoints); ENV_CHECKPOINT_DIR overrides $RUNNER_RUN_DIR/checkpoints.
from runner.harness import ENV_CHECKPOINT_DIR as ENV_CHECKPOINT_DIR
from runner.harness import ENV_RUN_DIR as ENV_RUN_DIR

#: Folder of job files (default: ``./jobs``, then the ones shipped with runner).
ENV_JOBS_DIR = "RUNNER_JOBS_DIR"
#: Where ``runner`` and ``./train.sh`` keep runs (default: ``./runs``).
ENV_RUNS_DIR = "RUNNER_RUNS_DIR"
#: Where synthesised datasets go (default: ``./data``).
ENV_DATA_DIR = "RUNNER_DATA_DIR"
#: Dataset folder handed to a training process (the jobs' own convention).
ENV_DATASET_DIR = "DATASET_DIR"
#: ``cpu`` or ``cuda``: the device the training process should use.
ENV_DEVICE = "RUNNER_DEVICE"
#: Set to 1 for a full traceback on an internal error.
ENV_DEBUG = "RUNNER_DEBUG"
#: A testing aid: NVML replaced by a scripted or recorded trace (never on by default).
ENV_FAKE_NVML = "RUNNER_FAKE_NVML"
#: The image a rented host runs for a job that names none.
ENV_IMAGE = "RUNNER_IMAGE"

#: Variables a test must never inherit from the developer's shell.
HERMETIC_ENV = (
    ENV_RUN_DIR,
    ENV_CHECKPOINT_DIR,
    ENV_JOBS_DIR,
    ENV_RUNS_DIR,
    ENV_DATA_DIR,
    ENV_DATASET_DIR,
    ENV_DEVICE,
    ENV_DEBUG,
    ENV_FAKE_NVML,
    ENV_IMAGE,
    "VAST_API_KEY",
    "VAST_URL",
    "XDG_STATE_HOME",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "WANDB_API_KEY",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "DOCKER_HOST",
)

ENV_HELP = {
    ENV_RUN_DIR: "run folder the harness writes to (set by runner for the training process)",
    ENV_CHECKPOINT_DIR: "checkpoint folder (default: $RUNNER_RUN_DIR/checkpoints)",
    ENV_JOBS_DIR: "folder of job files (default: ./jobs, then the shipped ones)",
    ENV_RUNS_DIR: "where local runs are kept (default: ./runs)",
    ENV_DATA_DIR: "where synthetic datasets are written (default: ./data)",
    ENV_DEBUG: "1 shows the traceback of an internal error",
    ENV_IMAGE: "image for a rented job that names none (default runner/franka-embedded:latest)",
    ENV_FAKE_NVML: "testing aid: scenario:NAME[:k=v,...], trace:FILE or no-driver instead of NVML",
    "HF_TOKEN": "Hugging Face token for pushes and pulls (never logged, never an argument)",
    "HF_ENDPOINT": "Hub endpoint (default https://huggingface.co)",
    "WANDB_API_KEY": "W&B key for a job's mirror (wandb.enabled) and runner wandb-sync "
    "(never logged, never an argument)",
    "VAST_API_KEY": "vast.ai API key (else the vastai CLI's key file); never leaves this machine",
    "VAST_URL": "vast.ai API endpoint (default https://console.vast.ai)",
}
