"""When a run may be restarted, and how its command changes on a restart.

:class:`RestartBudget` is the job's :class:`~runner.spec.RestartPolicy` as state:
at most ``max_restarts`` within ``window_minutes`` (NVRx's 5 in 30 min), and no
more than ``max_without_checkpoint`` restarts in a row that gained no new
checkpoint (a crash loop: restarting again would only repeat it).

:func:`set_override` and :func:`current_value` read and rewrite one
``key=value`` in a command the way the job takes its overrides (Hydra
``key=value``, CLI ``--key=value`` / ``--key value``, or an environment
variable), so a restart can add the job's ``resume_args`` and an OOM can halve
the batch size.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from runner.spec import RestartPolicy

__all__ = [
    "OverrideStyle",
    "RestartBudget",
    "RestartVerdict",
    "current_value",
    "guess_style",
    "halve",
    "set_override",
]

OverrideStyle = Literal["hydra", "cli", "env", "none"]


@dataclass(frozen=True)
class RestartVerdict:
    """Whether one more restart is allowed, and if not, why (one phrase)."""

    allowed: bool
    reason: str = ""


class RestartBudget:
    """Counts restarts against a :class:`RestartPolicy`.

    ``checkpoint`` passed to :meth:`ask` is anything that changes when a new
    complete checkpoint appears (its step, or a marker for layouts runner
    cannot read); ``None`` means none exists. The first call compares against
    ``initial_checkpoint``, the newest one when supervision began.
    """

    def __init__(
        self,
        policy: RestartPolicy,
        *,
        initial_checkpoint: Hashable | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._times: deque[float] = deque()
        self._checkpoint = initial_checkpoint
        self.used = 0
        self.without_checkpoint = 0

    def ask(self, checkpoint: Hashable | None) -> RestartVerdict:
        """Take one restart from the budget when it allows one.

        Refused when ``max_restarts`` restarts already happened within the
        window, or when the last ``max_without_checkpoint`` restarts gained no
        new checkpoint.
        """
        now = self._clock()
        window = self.policy.window_minutes * 60.0
        while self._times and now - self._times[0] > window:
            self._times.popleft()
        if checkpoint is not None and checkpoint != self._checkpoint:
            self.without_checkpoint = 0
            self._checkpoint = checkpoint
        if self.policy.max_restarts == 0:
            return RestartVerdict(False, "restarts are off (restart.max_restarts: 0)")
        if len(self._times) >= self.policy.max_restarts:
            return RestartVerdict(
                False,
                f"restart budget spent ({len(self._times)} restarts within "
                f"{_minutes(self.policy.window_minutes)})",
            )
        if self.without_checkpoint >= self.policy.max_without_checkpoint:
            return RestartVerdict(
                False,
                f"crash loop: {self.without_checkpoint} restarts without a new checkpoint",
            )
        self._times.append(now)
        self.used += 1
        self.without_checkpoint += 1
        return RestartVerdict(True)


def _minutes(value: float) -> str:
    return f"{value:g} min"


# --------------------------------------------------------------------------- overrides


def guess_style(argv: Sequence[str], env: Mapping[str, str], key: str) -> OverrideStyle:
    """How ``key`` reaches a command whose job is unknown: where it is found, else Hydra."""
    if _find_hydra(argv, key) is not None:
        return "hydra"
    if _find_cli(argv, key) is not None:
        return "cli"
    if key in env:
        return "env"
    return "hydra"


def _hydra_pattern(key: str) -> re.Pattern[str]:
    return re.compile(rf"^(?P<prefix>[+~]{{0,2}}){re.escape(key)}=(?P<value>.*)$", re.S)


def _find_hydra(argv: Sequence[str], key: str) -> int | None:
    pattern = _hydra_pattern(key)
    found = None
    for i, arg in enumerate(argv):
        if pattern.match(arg):
            found = i  # the last one wins, as in Hydra
    return found


def _cli_names(key: str) -> tuple[str, ...]:
    bare = key.lstrip("-")
    names = {f"--{bare}", f"--{bare.replace('_', '-')}", f"--{bare.replace('-', '_')}"}
    return tuple(sorted(names))


def _find_cli(argv: Sequence[str], key: str) -> tuple[int, bool] | None:
    """Index of the last ``--key=V`` (True) or ``--key V`` (False)."""
    names = _cli_names(key)
    found = None
    for i, arg in enumerate(argv):
        name, sep, _ = arg.partition("=")
        if name in names:
            if sep:
                found = (i, True)
            elif i + 1 < len(argv):
                found = (i, False)
    return found


def current_value(
    argv: Sequence[str], env: Mapping[str, str], key: str, style: OverrideStyle
) -> str | None:
    """The value ``key`` has in this command (``None`` when it is not set there)."""
    if style == "env":
        return env.get(key)
    if style == "cli":
        at = _find_cli(argv, key)
        if at is None:
            return None
        i, joined = at
        return argv[i].partition("=")[2] if joined else argv[i + 1]
    if style == "hydra":
        i_h = _find_hydra(argv, key)
        if i_h is None:
            return None
        match = _hydra_pattern(key).match(argv[i_h])
        return match.group("value") if match else None
    return None


def set_override(
    argv: Sequence[str],
    env: Mapping[str, str],
    key: str,
    value: str,
    style: OverrideStyle,
) -> tuple[list[str], dict[str, str]]:
    """The command and extra environment with ``key`` set to ``value``.

    An existing setting is replaced in place (the last one, which is the one
    that counts); otherwise it is added at the end (Hydra ``key=value``, CLI
    ``--key=value``) or to the environment. ``style`` ``none`` changes nothing.
    """
    out, out_env = list(argv), dict(env)
    if style == "env":
        out_env[key] = value
    elif style == "cli":
        at = _find_cli(out, key)
        if at is None:
            out.append(f"--{key.lstrip('-')}={value}")
        elif at[1]:
            out[at[0]] = f"{out[at[0]].partition('=')[0]}={value}"
        else:
            out[at[0] + 1] = value
    elif style == "hydra":
        i = _find_hydra(out, key)
        if i is None:
            out.append(f"{key}={value}")
        else:
            match = _hydra_pattern(key).match(out[i])
            prefix = match.group("prefix") if match else ""
            out[i] = f"{prefix}{key}={value}"
    return out, out_env


def halve(value: str | None) -> int | None:
    """Half of an integer batch size, or ``None`` when it cannot be halved (missing, 1)."""
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    if number <= 1:
        return None
    return number // 2
