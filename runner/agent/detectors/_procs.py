"""The process tree: zombie children and stuck workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from runner.agent.detectors._common import (
    CPU_FLAT_CORES,
    OFF_LOOP_PHASES,
    BusyPower,
    CheckpointWatch,
    CpuWindow,
    JobGpus,
    StepWatch,
    cpu_of,
    duration,
    gpu_busy,
    gpus_of,
    make_event,
    processes,
    workers,
)
from runner.agent.observe import Observation
from runner.rundir import Event
from runner.sampling.procs import ProcessSnapshot
from runner.spec import WatchdogSpec

#: A zombie reaped within this many seconds is normal (a worker being joined).
ZOMBIE_PERSIST_S = 15.0
#: A process in uninterruptible sleep this long is stuck in the kernel.
DISK_SLEEP_S = 60.0


class ZombieWorkersDetector:
    """Dead or stuck processes in the job's tree (kind ``zombie_workers``, warning, ``dump``).

    - ``zombie``: a child that exited and that its parent has not reaped
      (``[python] <defunct>``, as in the seeds' freeze) for more than
      :data:`ZOMBIE_PERSIST_S`; a zombie reaped within seconds is a worker
      being joined, normal.
    - ``disk_sleep``: a process in uninterruptible sleep (``D``) on every tick
      for :data:`DISK_SLEEP_S` (not while checkpointing: a big save to a slow
      disk legitimately sits in D).
    - ``workers_no_cpu``: DataLoader-like workers (forks of their parent) used
      < :data:`CPU_FLAT_CORES` cores together over ``confirm_s`` while steps
      stopped (no step for max(``stall_factor`` x longest interval,
      ``confirm_s``)) and no GPU of the job computes: the input pipeline is
      hung (PyTorch #1355, #33296...). Not while checkpointing or evaluating on
      the GPU: workers idle with a full prefetch queue then.

    Alone each is a warning with action ``dump`` (stacks say where they hang);
    the stall detector lists the same zombies and D-state processes in its
    evidence. Once per episode and reason; ``info`` when it clears.
    """

    name = "zombie_workers"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._busy = BusyPower()
        self._attempt: int | None = None
        self._new_attempt()

    def _new_attempt(self) -> None:
        self._steps = StepWatch()
        self._gpus = JobGpus()
        self._ckpt = CheckpointWatch()
        self._worker_cpu = CpuWindow(self.watchdog.confirm_s + 10 * self.watchdog.sample_interval_s)
        self._zombies: dict[tuple[int, float], float] = {}
        self._sleepers: dict[tuple[int, float], float] = {}
        self._active: set[str] = set()

    def observe(self, obs: Observation) -> Sequence[Event]:
        w = self.watchdog
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._new_attempt()
        now = obs.now
        self._steps.update(obs.progress)
        gpus = self._gpus.update(obs, gpus_of(obs.sample))
        self._busy.update(gpus, w.power_collapse_fraction)
        checkpointing = self._ckpt.update(obs)
        tree = obs.sample.procs
        procs = processes(obs.sample)
        root = None if tree is None else tree.root_pid
        ws = workers(obs.sample)
        self._worker_cpu.add(now, cpu_of(tree, ws) if ws else None)
        events: list[Event] = []

        zombies = [p for p in procs if p.is_zombie and p.pid != root]
        self._zombies = {
            (p.pid, p.create_time): self._zombies.get((p.pid, p.create_time), now) for p in zombies
        }
        lasting = [
            p for p in zombies if now - self._zombies[(p.pid, p.create_time)] >= ZOMBIE_PERSIST_S
        ]
        events.extend(
            self._episode(obs, "zombie", bool(lasting), lambda: self._zombie_event(obs, lasting))
        )

        sleepers = [p for p in procs if p.state == "disk-sleep"]
        self._sleepers = {
            (p.pid, p.create_time): self._sleepers.get((p.pid, p.create_time), now)
            for p in sleepers
        }
        stuck = [
            p for p in sleepers if now - self._sleepers[(p.pid, p.create_time)] >= DISK_SLEEP_S
        ]
        events.extend(
            self._episode(
                obs,
                "disk_sleep",
                bool(stuck) and not checkpointing,
                lambda: self._sleep_event(obs, stuck),
            )
        )

        cores = self._worker_cpu.rate(now, w.confirm_s) if ws else None
        flat = (
            bool(ws)
            and obs.alive
            and not checkpointing
            and obs.progress.phase not in OFF_LOOP_PHASES
            and cores is not None
            and cores < CPU_FLAT_CORES
            and self._steps.stopped(obs, w.stall_factor, w.confirm_s)
            and not any(gpu_busy(g, self._busy, w.power_collapse_fraction) for g in gpus)
        )
        events.extend(
            self._episode(
                obs, "workers_no_cpu", flat, lambda: self._flat_event(obs, ws, cores or 0.0)
            )
        )
        return events

    def _episode(
        self, obs: Observation, reason: str, condition: bool, build: Callable[[], Event]
    ) -> list[Event]:
        if condition and reason not in self._active:
            self._active.add(reason)
            return [build()]
        if not condition and reason in self._active:
            self._active.discard(reason)
            words = {
                "zombie": "the zombie processes were reaped",
                "disk_sleep": "no process is stuck in uninterruptible sleep any more",
                "workers_no_cpu": "the workers use CPU again",
            }
            return [make_event(obs, "zombie_workers", "info", words[reason], {"reason": reason})]
        return []

    def _zombie_event(self, obs: Observation, zombies: Sequence[ProcessSnapshot]) -> Event:
        by_pid = {p.pid: p for p in processes(obs.sample)}
        facts: list[dict[str, Any]] = []
        for z in zombies[:16]:
            parent = by_pid.get(z.ppid)
            facts.append(
                {
                    "pid": z.pid,
                    "ppid": z.ppid,
                    "name": z.name,
                    "age_s": z.age_s,
                    "zombie_for_s": round(obs.now - self._zombies[(z.pid, z.create_time)], 1),
                    "parent_name": None if parent is None else parent.name,
                    "parent_cmdline": None if parent is None else parent.cmdline,
                    "parent_state": None if parent is None else parent.state,
                }
            )
        first = zombies[0]
        first_for = obs.now - self._zombies[(first.pid, first.create_time)]
        evidence: dict[str, Any] = {
            "reason": "zombie",
            "zombies": facts,
            "count": len(zombies),
            "persist_s": ZOMBIE_PERSIST_S,
        }
        return make_event(
            obs,
            "zombie_workers",
            "warning",
            f"{len(zombies)} zombie process(es) in the job's tree (pid {first.pid} "
            f"[{first.name}] <defunct>, not reaped by its parent {first.ppid} for "
            f"{duration(first_for)}): a worker died and nobody collected it, as in "
            "the silent freezes; taking stack dumps",
            evidence,
            "dump",
        )

    def _sleep_event(self, obs: Observation, stuck: Sequence[ProcessSnapshot]) -> Event:
        facts = [
            {
                "pid": p.pid,
                "ppid": p.ppid,
                "name": p.name,
                "cmdline": p.cmdline,
                "disk_sleep_for_s": round(obs.now - self._sleepers[(p.pid, p.create_time)], 1),
            }
            for p in stuck[:16]
        ]
        first = facts[0]
        return make_event(
            obs,
            "zombie_workers",
            "warning",
            f"{len(stuck)} process(es) of the job in uninterruptible sleep (D) for over "
            f"{DISK_SLEEP_S:.0f} s (pid {first['pid']} {first['name']}): blocked in the kernel, "
            "usually on I/O (a network filesystem, a failing disk); taking stack dumps",
            {"reason": "disk_sleep", "processes": facts, "limit_s": DISK_SLEEP_S},
            "dump",
        )

    def _flat_event(self, obs: Observation, ws: Sequence[ProcessSnapshot], cores: float) -> Event:
        silence = self._steps.silence(obs)
        evidence = {
            "reason": "workers_no_cpu",
            "workers": [
                {"pid": p.pid, "ppid": p.ppid, "state": p.state, "cpu_time_s": p.cpu_time_s}
                for p in ws[:32]
            ],
            "worker_cpu_cores": round(cores, 4),
            "window_s": self.watchdog.confirm_s,
            "since_last_step_s": round(silence, 1),
            "step": obs.progress.step,
        }
        return make_event(
            obs,
            "zombie_workers",
            "warning",
            f"no step for {duration(silence)} and the job's {len(ws)} DataLoader workers used no "
            f"CPU for {self.watchdog.confirm_s:.0f} s: the input pipeline is stuck; taking "
            "stack dumps",
            evidence,
            "dump",
        )
