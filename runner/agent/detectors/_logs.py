"""Failures the job's own log names: out of memory, NCCL timeouts."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.agent.detectors._common import (
    LogMatch,
    StepWatch,
    duration,
    find_line,
    gpus_of,
    make_event,
    num,
)
from runner.agent.observe import Observation
from runner.rundir import Event
from runner.spec import WatchdogSpec

# -- OOM -------------------------------------------------------------------------

# Device OOM as PyTorch and JAX print it. A bare mention ("... to avoid CUDA out of
# memory") does not match: the patterns need the exception's own shape.
_DEVICE_OOM: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("torch.OutOfMemoryError", re.compile(r"\bOutOfMemoryError\s*:")),
    (
        "CUDA out of memory",
        re.compile(r"CUDA out of memory\.\s*Tried to allocate|Error:\s*CUDA out of memory"),
    ),
    ("CUDA error: out of memory", re.compile(r"CUDA error: out of memory")),
    ("CUBLAS_STATUS_ALLOC_FAILED", re.compile(r"CUBLAS_STATUS_ALLOC_FAILED")),
    ("RESOURCE_EXHAUSTED: Out of memory", re.compile(r"RESOURCE_EXHAUSTED:\s*Out of memory")),
)
# Source lines a traceback quotes ("except torch.OutOfMemoryError:") are not errors.
_CODE = re.compile(r"^\s*(?:except|raise|if|elif|import|from|def|#)\b")
# A process of the job killed with SIGKILL, as DataLoader, bash and the kernel say it.
_KILLED: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel OOM killer", re.compile(r"Out of memory: Kill(?:ed)? process|invoked oom-killer")),
    ("worker killed by SIGKILL", re.compile(r"killed by signal: Killed")),
    ("shell: Killed", re.compile(r"^\s*Killed\s*$|\b\d+\s+Killed\s+\S|line \d+:\s+\d+\s+Killed")),
)
#: Seconds of RAM history consulted when a process was SIGKILLed.
OOM_RAM_WINDOW_S = 60.0
#: Seconds a process that printed an OOM is given, at least, to exit by itself
#: (freeing a CUDA context, joining DataLoader workers), where the stall limit is longer.
OOM_EXIT_GRACE_S = 10.0


@dataclass
class _PendingOom:
    """A device OOM line seen while the process lives: handled, or a failure?"""

    hit: LogMatch
    seen_at: float
    #: ``Progress.last_step_time`` and step when the line was seen.
    step_time: float | None
    step: int | None
    #: The GPUs' memory when the line was seen.
    gpus: list[dict[str, Any]]
    lines: int = 1


class OomDetector:
    """Out of memory, on the GPU or the host (kind ``oom``).

    Watches the job's log for ``torch.OutOfMemoryError`` / ``CUDA out of
    memory. Tried to allocate`` / ``CUDA error: out of memory`` /
    ``CUBLAS_STATUS_ALLOC_FAILED`` and JAX's ``RESOURCE_EXHAUSTED: Out of
    memory``. Such a line is a failure only when the job does not survive it;
    many scripts (fairseq and others) catch the error, log it, skip the batch
    and train on. So after the line:

    - the process ends with a non-zero code (its last tick, or the line is
      seen only then): it died of it, critical, action ``stop``. The agent
      waits for that exit rather than racing it, so the run ends with the
      command's own exit code, every time;
    - a step comes (a later tick's step sighting): a handled OOM, one
      ``warning`` per attempt with the line and the steps made since, action
      ``none`` (so does an exit with code 0);
    - no step, the process alive, once the silence since the last step reaches
      a confirmed stall's limit, ``max(confirm_s, stall_factor x the longest
      recent step interval)`` (the OOM line stands in for the stall's second
      signal; the stall detector waits ``confirm_s`` longer after an OOM line,
      so the OOM names the cause), and at least that, or
      :data:`OOM_EXIT_GRACE_S` if less, after the line: it stopped making
      progress after it, critical, action ``stop`` (the agent dumps stacks and
      stops it: exit 3). Before the first step:
      ``stall_min_s`` after the line (a batch-size finder backs off and starts
      again). Without step progress (no harness, no pattern) the agent
      cannot tell: after ``confirm_s`` alive, a warning, and the stall
      detector's GPU and CPU signals judge a hang.

    For a host OOM kill: the kernel's ``Out of memory: Killed process``, or a
    process of the job SIGKILLed (``DataLoader worker ... is killed by signal:
    Killed``, bash's ``Killed``) while available RAM was below twice ``1 -
    ram_pressure_fraction`` of total in the last 60 s: critical, ``stop``. A
    kill without RAM near full (a container's cgroup limit is invisible in the
    host's meminfo) is a warning only.

    OOM is deterministic: the same configuration fails again, so the run is
    stopped, never retried unchanged (the supervisor owns the opt-in smaller
    batch). The evidence carries the matched line and the GPUs' memory.
    Critical once per attempt.
    """

    name = "oom"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._attempt: int | None = None
        self._ram: deque[tuple[float, float]] = deque()
        self._new_attempt()

    def _new_attempt(self) -> None:
        self._reported = False
        self._warned = False
        self._handled_warned = False
        self._unknown_warned = False
        self._handled = 0
        self._pending: _PendingOom | None = None
        self._steps = StepWatch()

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._new_attempt()
        host = obs.sample.host
        if host is not None:
            total, avail = num(host.ram_total_bytes), num(host.ram_available_bytes)
            if total and avail is not None:
                self._ram.append((obs.now, avail / total))
        while self._ram and self._ram[0][0] < obs.now - OOM_RAM_WINDOW_S:
            self._ram.popleft()
        self._steps.update(obs.progress)
        if self._reported:
            return []
        lines = [x for x in obs.log_lines if isinstance(x, str) and not _CODE.match(x)]
        hit = find_line(lines, _DEVICE_OOM) if lines else None
        if hit is not None:
            if self._pending is None:
                p = obs.progress
                gpus = _gpu_memory(obs)
                self._pending = _PendingOom(hit, obs.now, num(p.last_step_time), p.step, gpus)
            else:
                self._pending.lines += 1
        if self._pending is not None:
            event = self._judge(obs, fresh=hit is not None)
            if event is not None:
                return [event]
        if hit is not None or not lines:
            return []
        kill = find_line(lines, _KILLED)
        if kill is None:
            return []
        return self._host(obs, kill)

    def _judge(self, obs: Observation, *, fresh: bool) -> Event | None:
        """The pending OOM's verdict this tick, if it has one."""
        pending = self._pending
        assert pending is not None
        w = self.watchdog
        progress = obs.progress
        waited = obs.now - pending.seen_at
        stepped = num(progress.last_step_time)
        after = (
            not fresh
            and stepped is not None
            and (pending.step_time is None or stepped > pending.step_time)
        )
        if after or (not obs.alive and obs.exit_code == 0):
            self._pending = None
            self._handled += 1
            if self._handled_warned:
                return None
            self._handled_warned = True
            return self._handled_event(obs, pending)
        if not obs.alive:
            self._pending = None
            self._reported = True
            return self._device(obs, pending, died=True)
        silence = self._steps.silence(obs)
        if progress.source == "none":
            if waited < w.confirm_s:
                return None
            self._pending = None
            if self._unknown_warned:
                return None
            self._unknown_warned = True
            return self._unknown_event(obs, pending)
        longest = self._steps.longest(progress)
        if progress.last_step_time is None or longest is None:
            if waited < w.stall_min_s:
                return None
        else:
            # When a confirmed stall would be due: the stall detector waits longer
            # after an OOM line (see StallDetector), so the OOM names the cause.
            due = max(w.confirm_s, w.stall_factor * longest)
            if waited < min(due, OOM_EXIT_GRACE_S) or silence < due:
                return None
        self._pending = None
        self._reported = True
        return self._device(obs, pending, died=False, silence=silence, waited=waited)

    def _gpu_evidence(self, obs: Observation, pending: _PendingOom) -> dict[str, Any]:
        hit = pending.hit
        return {
            "where": "gpu",
            "framework": "jax" if hit.pattern.startswith("RESOURCE_EXHAUSTED") else "torch",
            "pattern": hit.pattern,
            "line": hit.line,
            "gpus": pending.gpus or _gpu_memory(obs),
            "oom_sightings": pending.lines,
            "step_at_oom": pending.step,
        }

    def _device(
        self,
        obs: Observation,
        pending: _PendingOom,
        *,
        died: bool,
        silence: float | None = None,
        waited: float | None = None,
    ) -> Event:
        hit = pending.hit
        jax = hit.pattern.startswith("RESOURCE_EXHAUSTED")
        evidence = self._gpu_evidence(obs, pending)
        evidence.update({"died": died, "handled": False, "exit_code": obs.exit_code})
        hint = (
            "lower the batch size or XLA_PYTHON_CLIENT_MEM_FRACTION headroom"
            if jax
            else "lower the batch size, or use gradient checkpointing / bf16"
        )
        how = ""
        if not died:
            assert silence is not None and waited is not None
            evidence.update({"silence_s": round(silence, 1), "since_oom_s": round(waited, 1)})
            how = f", and no step since ({duration(silence)} without one, the process still alive)"
        return make_event(
            obs,
            "oom",
            "critical",
            f"out of GPU memory ({_excerpt(hit)}){how}: the same configuration fails the "
            f"same way, so the run is stopped, not retried; {hint}",
            evidence,
            "stop",
        )

    def _handled_event(self, obs: Observation, pending: _PendingOom) -> Event:
        evidence = self._gpu_evidence(obs, pending)
        step = obs.progress.step
        after = (
            step - pending.step
            if isinstance(step, int) and isinstance(pending.step, int) and step >= pending.step
            else None
        )
        evidence.update(
            {
                "died": False,
                "handled": True,
                "steps_after": after,
                "step": step,
                "exit_code": obs.exit_code,
            }
        )
        since = f" ({after} step{'s' if after != 1 else ''} since)" if after else ""
        return make_event(
            obs,
            "oom",
            "warning",
            f"out of GPU memory ({_excerpt(pending.hit)}), handled: the job caught it and "
            f"trained on{since}; skipped batches cost data, so lower the batch size if it "
            "repeats",
            evidence,
        )

    def _unknown_event(self, obs: Observation, pending: _PendingOom) -> Event:
        evidence = self._gpu_evidence(obs, pending)
        evidence.update({"died": False, "handled": None, "exit_code": None})
        return make_event(
            obs,
            "oom",
            "warning",
            f"out of GPU memory ({_excerpt(pending.hit)}) and the process lives on; it reports "
            "no steps, so whether it recovered cannot be told: the stall detector judges a hang",
            evidence,
        )

    def _host(self, obs: Observation, kill: LogMatch) -> list[Event]:
        near = 2.0 * (1.0 - self.watchdog.ram_pressure_fraction)
        lowest = min((f for _, f in self._ram), default=None)
        evidence: dict[str, Any] = {
            "where": "host",
            "pattern": kill.pattern,
            "line": kill.line,
            "ram_available_min_fraction": None if lowest is None else round(lowest, 4),
            "ram_near_full_below": near,
            "window_s": OOM_RAM_WINDOW_S,
        }
        host = obs.sample.host
        if host is not None:
            evidence["ram_total_bytes"] = host.ram_total_bytes
            evidence["ram_available_bytes"] = host.ram_available_bytes
        pid = re.search(r"pid\(?s?\)?\s+(\d+)|process (\d+)", kill.line)
        if pid is not None:
            evidence["pid"] = int(pid.group(1) or pid.group(2))
        if kill.pattern == "kernel OOM killer" or (lowest is not None and lowest < near):
            self._reported = True
            return [
                make_event(
                    obs,
                    "oom",
                    "critical",
                    "the kernel killed a process of the job for lack of RAM: the same "
                    "configuration fails the same way, so the run is stopped; lower "
                    "num_workers (~2.5 GB each in the users' runs) or the batch size",
                    evidence,
                    "stop",
                )
            ]
        if self._warned:
            return []
        self._warned = True
        return [
            make_event(
                obs,
                "oom",
                "warning",
                "a process of the job was killed with SIGKILL while the host's RAM was not "
                "near full: a container memory limit, or someone's kill -9",
                evidence,
            )
        ]


def has_device_oom(lines: Sequence[str]) -> bool:
    """Whether ``lines`` hold a device OOM error (not a source line quoting one)."""
    kept = [x for x in lines if isinstance(x, str) and not _CODE.match(x)]
    return bool(kept) and find_line(kept, _DEVICE_OOM) is not None


def _gpu_memory(obs: Observation) -> list[dict[str, Any]]:
    return [
        {
            "index": g.index,
            "name": g.name,
            "memory_used_bytes": g.memory_used_bytes,
            "memory_total_bytes": g.memory_total_bytes,
        }
        for g in gpus_of(obs.sample)
        if not g.lost
    ]


def _excerpt(hit: LogMatch, width: int = 120) -> str:
    """The matched error as the user saw it, from the match on, cut to ``width``."""
    text = hit.line[hit.match.start() :].strip()
    if hit.pattern == "torch.OutOfMemoryError":
        text = hit.line[hit.line.rfind(" ", 0, hit.match.start()) + 1 :].strip()
    return text if len(text) <= width else text[: width - 3] + "..."


# -- NCCL ------------------------------------------------------------------------

_NCCL_STRONG: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "Watchdog caught collective operation timeout",
        re.compile(r"Watchdog caught collective operation timeout"),
    ),
    ("Heartbeat monitor timed out", re.compile(r"Heartbeat monitor timed out")),
    ("ProcessGroupNCCL watchdog got stuck", re.compile(r"watchdog got stuck", re.IGNORECASE)),
)
_NCCL_WEAK: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "ProcessGroupNCCL ... Timeout",
        re.compile(r"ProcessGroupNCCL.{0,200}?(?:Timeout|timed out)", re.IGNORECASE),
    ),
    ("NCCL timeout", re.compile(r"\bNCCL\b.{0,40}?\btime[ -]?(?:d[ -]?)?out\b", re.IGNORECASE)),
)
# A line that configures or announces the timeout rather than hitting it.
_NCCL_CONFIG = re.compile(
    r"\b(?:set|setting|using|configured?|default|initiali[sz]\w*|options?)\b"
    r"|time[ -]?out(?:\s*\(ms\))?\s*(?:=|:|to)\s*\d",
    re.IGNORECASE,
)
_RANK = re.compile(r"\[(?:PG \d+ )?Rank (\d+)\]|\[rank(\d+)\]", re.IGNORECASE)


class NcclTimeoutDetector:
    """A collective that never completed (kind ``nccl_timeout``, critical, action ``restart``).

    Watches the log for PyTorch's ``Watchdog caught collective operation
    timeout``, the heartbeat monitor's ``Heartbeat monitor timed out`` (480 s
    default), ``watchdog got stuck``, and ``ProcessGroupNCCL ... Timeout`` /
    ``NCCL timeout`` lines that are not configuration banners (``timeout set to
    1800``). A hung rank or a broken link stalls every rank; the process group
    cannot recover in place, so all ranks restart from the newest checkpoint
    (torchrun does the same). Evidence: the line, rank, op and timeout when the
    line gives them. Once per attempt.
    """

    name = "nccl_timeout"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._attempt: int | None = None
        self._reported = False

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._reported = False
        if self._reported or not obs.log_lines:
            return []
        hit = find_line(obs.log_lines, _NCCL_STRONG)
        if hit is None:
            weak = [
                x
                for x in obs.log_lines
                if isinstance(x, str) and "NCCL" in x.upper() and not _NCCL_CONFIG.search(x)
            ]
            hit = find_line(weak, _NCCL_WEAK)
        if hit is None:
            return []
        self._reported = True
        line = hit.line
        evidence: dict[str, Any] = {"pattern": hit.pattern, "line": line}
        rank = _RANK.search(line)
        if rank is not None:
            evidence["rank"] = int(rank.group(1) or rank.group(2))
        for key, regex in (
            ("op", r"OpType=(\w+)"),
            ("timeout_ms", r"Timeout\(ms\)=(\d+)"),
            ("ran_ms", r"ran for (\d+) milliseconds"),
        ):
            m = re.search(regex, line)
            if m is not None:
                evidence[key] = int(m.group(1)) if key.endswith("_ms") else m.group(1)
        detail = ", ".join(
            f"{k} {evidence[k]}" for k in ("rank", "op", "timeout_ms") if k in evidence
        )
        return [
            make_event(
                obs,
                "nccl_timeout",
                "critical",
                f"an NCCL collective timed out{f' ({detail})' if detail else ''}: a rank hung "
                "or the interconnect failed; all ranks restart from the newest checkpoint",
                evidence,
                "restart",
            )
        ]
