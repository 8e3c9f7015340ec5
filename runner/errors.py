"""Every error runner raises on purpose.

The CLI turns a :class:`RunnerError` into one red line on stderr and the error's
``exit_code``; nothing else about it reaches the user. Messages say what failed
and what to do next, in one sentence each.

    RunnerError                      exit 1 unless said otherwise
    ├── UsageError                   exit 2: a bad flag, argument or override
    ├── SpecError                    a job file is missing or malformed
    ├── DatasetError                 a dataset is missing or has the wrong layout
    ├── CheckpointError              a checkpoint cannot be written or read
    ├── DependencyError              an optional dependency (torch, ...) is missing
    ├── SecretError                  a secret the job needs is not in the environment
    ├── DeviceError                  no usable device for the job
    └── PreflightError               a pre-flight item failed: nothing was started or rented

Foreign exceptions are mapped where they enter (``raise ... from exc``), never
caught and re-worded further up.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base of every deliberate runner failure: ``str(err)`` is the one line shown."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(RunnerError):
    """A wrong flag, argument or override on the command line."""

    exit_code = 2


class SpecError(RunnerError):
    """A job file is missing, unreadable or fails validation."""


class DatasetError(RunnerError):
    """A dataset is missing or does not have the layout its job expects."""


class CheckpointError(RunnerError):
    """A checkpoint cannot be written, found or loaded."""


class DependencyError(RunnerError):
    """An optional dependency is not installed for this command."""


class SecretError(RunnerError):
    """A secret the job requires is missing from the user's environment."""


class DeviceError(RunnerError):
    """No device the job can run on."""


class PreflightError(RunnerError):
    """A pre-flight check failed before anything was started or paid for."""


def missing_dependency(package: str, extra: str = "train") -> DependencyError:
    """The error for an optional import that failed, with the install line that fixes it."""
    return DependencyError(
        f"this needs {package}, which is not installed; install the training side with "
        f"`pip install 'runner[{extra}]'` (or run ./train.sh, which sets it up)"
    )
