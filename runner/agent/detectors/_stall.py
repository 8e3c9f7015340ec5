"""The stall: the run stopped making steps (the seeds' silent freeze)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runner.agent.detectors._common import (
    AFTER_TRAINING_PHASES,
    CPU_FLAT_CORES,
    MIN_KNOWN_INTERVALS,
    WARMUP_INTERVALS,
    BusyPower,
    CheckpointWatch,
    CpuWindow,
    Hold,
    JobGpus,
    StepWatch,
    cpu_of,
    duration,
    gpu_brief,
    gpu_busy,
    gpu_quiet,
    gpus_of,
    make_event,
    processes,
    workers,
)
from runner.agent.detectors._logs import has_device_oom
from runner.agent.observe import Observation
from runner.rundir import Event
from runner.sampling.nvml import GpuSnapshot
from runner.sampling.procs import ProcessSnapshot
from runner.spec import WatchdogSpec

_SIGNAL_WORDS = {
    "cpu_flat": "no CPU used by the whole process tree",
    "gpu_idle": "the GPU idle",
    "gpu_power_low": "GPU power collapsed",
    "gpu_lost": "the GPU lost",
    "workers_flat": "DataLoader workers using no CPU",
}


class StallDetector:
    """No step progress for longer than the run's own rhythm allows (kind ``stall``).

    Watches ``Progress.last_step_time`` against a limit:

    - before the first step of an attempt: ``startup_timeout_s``;
    - for the first :data:`WARMUP_INTERVALS` intervals after it, the larger of
      that and the learned limit (compilation, cuDNN autotuning);
    - then the learned limit ``max(stall_factor x longest recent interval,
      stall_min_s)`` (NVRx learns 5 x the longest interval);
    - while checkpointing (harness phase ``checkpoint``, or the checkpoint disk
      being written for log-parsed progress): ``checkpoint_timeout_s``, since
      saving sends no heartbeats (NVRx, Megatron's separate 420 s section);
      after the harness says ``done``/``failed``, the same.

    Past the limit: critical, action ``restart`` (the supervisor dumps stacks
    first); except while the training tree is still busy (it uses CPU, or its
    GPUs are busy) with nothing to confirm a hang: a slow step is no hang, so
    a ``warning`` with action ``dump`` comes at the limit (the stacks show where
    it is) and the restart only at ``busy_stall_factor`` x the limit.

    After a device OOM line since the last step, both limits below
    are ``confirm_s`` longer: the ``oom`` detector owns that silence (a job
    that stops stepping after an OOM is stopped, not restarted into the same
    OOM) and reports it when the confirmed limit is reached; this is the
    backstop. Confirmed sooner, once a step has been seen and the silence
    exceeds ``confirm_s`` and (once :data:`MIN_KNOWN_INTERVALS` intervals are
    known) ``stall_factor`` x the longest one, when for the last ``confirm_s`` a
    second signal agrees. In the warm-up a flat CPU counts only with the job's
    GPUs quiet or absent (a GPU busy autotuning leaves the CPU waiting); users'
    real deadlocks often come in the first minutes:

    - the whole process tree used < :data:`CPU_FLAT_CORES` cores (a deadlock
      uses no CPU), or
    - every GPU the job uses was idle (GpuIdle bit, 0 %), lost, or below
      ``power_collapse_fraction`` of its busy power (an NCCL hang can show
      ~100 % utilisation at low power), those GPUs were busy earlier in the
      attempt, and the DataLoader workers (if any) used no CPU either: GPU idle
      while workers still load data is an epoch boundary, not a hang.

    Progress source ``none`` (no harness, no pattern): nothing can be learned,
    so the signals alone decide: GPU quiet and tree CPU flat for
    ``stall_min_s`` (``startup_timeout_s`` while the GPU has not yet been busy).

    Reported once per stall; when steps resume, one ``info`` event. A new
    attempt starts afresh.
    """

    name = "stall"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._busy = BusyPower()  # a GPU's busy draw outlives attempts
        self._attempt: int | None = None
        self._new_attempt()

    def _new_attempt(self) -> None:
        w = self.watchdog
        keep = max(w.confirm_s, w.stall_min_s, w.startup_timeout_s) + 10 * w.sample_interval_s
        self._steps = StepWatch()
        self._gpus = JobGpus()
        self._job_gpus: tuple[GpuSnapshot, ...] = ()
        self._ckpt = CheckpointWatch()
        self._tree_cpu = CpuWindow(keep)
        self._worker_cpu = CpuWindow(keep)
        self._quiet = Hold()
        self._quiet_reasons: set[str] = set()
        self._gpu_busy_seen = False
        self._stalled_since: float | None = None
        self._busy_warned_at: float | None = None
        self._oom_since_step = False

    def observe(self, obs: Observation) -> Sequence[Event]:
        w = self.watchdog
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._new_attempt()
        now = obs.now
        advanced = self._steps.update(obs.progress)
        if advanced:
            self._oom_since_step = False
        if obs.log_lines and has_device_oom(obs.log_lines):
            self._oom_since_step = True
        gpus = self._gpus.update(obs, gpus_of(obs.sample))
        self._job_gpus = gpus
        self._busy.update(gpus, w.power_collapse_fraction)
        states = [gpu_quiet(g, self._busy, w.power_collapse_fraction) for g in gpus]
        known = [s for s in states if s[0] is not None]
        quiet = bool(known) and all(s[0] for s in known)
        self._quiet.update(now, quiet)
        self._quiet_reasons = {r for _, rs in known for r in rs} if quiet else set()
        if any(gpu_busy(g, self._busy, w.power_collapse_fraction) for g in gpus):
            self._gpu_busy_seen = True
        tree = obs.sample.procs
        self._tree_cpu.add(now, cpu_of(tree))
        self._worker_cpu.add(now, cpu_of(tree, workers(obs.sample)))
        checkpointing = self._ckpt.update(obs)

        if self._busy_warned_at is not None and advanced and self._stalled_since is None:
            warned = now - self._busy_warned_at
            self._busy_warned_at = None
            return [
                make_event(
                    obs,
                    "stall",
                    "info",
                    f"steps resumed at step {obs.progress.step} {duration(warned)} after the "
                    "slow-step warning: it was slow, not hung",
                    {"step": obs.progress.step, "since_warning_s": round(warned, 1)},
                )
            ]
        if self._stalled_since is not None:
            if advanced:
                stalled = now - self._stalled_since
                self._stalled_since = None
                return [
                    make_event(
                        obs,
                        "stall",
                        "info",
                        f"steps resumed at step {obs.progress.step} after the stall "
                        f"reported {duration(stalled)} ago",
                        {"step": obs.progress.step, "since_report_s": round(stalled, 1)},
                    )
                ]
            return []
        if not obs.alive:
            return []
        if obs.progress.source == "none":
            return self._signals_only(obs, bool(known))
        return self._check(obs, checkpointing)

    # -- with step progress ----------------------------------------------------------

    def _check(self, obs: Observation, checkpointing: bool) -> Sequence[Event]:
        w = self.watchdog
        progress = obs.progress
        silence = self._steps.silence(obs)
        longest = self._steps.longest(progress)
        known = self._steps.known(progress)
        learned = max(w.stall_factor * longest, w.stall_min_s) if longest else w.stall_min_s
        # After an OOM line the oom detector answers first (see the class docstring).
        defer = w.confirm_s if self._oom_since_step else 0.0
        learned += defer
        stepped = progress.last_step_time is not None
        if progress.phase in AFTER_TRAINING_PHASES:
            basis, limit = "after_training", max(w.checkpoint_timeout_s, learned)
        elif checkpointing:
            basis, limit = "checkpoint", max(w.checkpoint_timeout_s, learned)
        elif not stepped:
            basis, limit = "startup", w.startup_timeout_s
        elif known < WARMUP_INTERVALS:
            basis, limit = "warmup", max(learned, w.startup_timeout_s)
        else:
            basis, limit = "learned", learned

        confirmed_by: list[str] = []
        tree_cores = self._tree_cpu.rate(obs.now, w.confirm_s)
        worker_cores = self._worker_cpu.rate(obs.now, w.confirm_s)
        # In the warm-up the intervals say little (tqdm's monitor thread redraws a frozen
        # bar 10-20 s later, which reads as one slow step): a tree with no CPU and no busy
        # GPU for confirm_s is confirmed whatever they say.
        early = basis == "warmup" or known < MIN_KNOWN_INTERVALS
        if (
            basis in ("learned", "warmup")
            and (early or longest is None or silence > w.stall_factor * longest + defer)
            and silence >= w.confirm_s + defer
        ):
            gpus_quiet = self._quiet.held(obs.now) >= w.confirm_s and self._gpu_busy_seen
            if (
                tree_cores is not None
                and tree_cores < CPU_FLAT_CORES
                and (not early or not self._job_gpus or gpus_quiet)
            ):
                confirmed_by.append("cpu_flat")
            if gpus_quiet:
                has_workers = bool(workers(obs.sample))
                if not has_workers or (worker_cores is not None and worker_cores < CPU_FLAT_CORES):
                    confirmed_by.extend(self._gpu_signals())
                    if has_workers:
                        confirmed_by.append("workers_flat")
        if not confirmed_by and silence <= limit:
            return []
        busy = not confirmed_by and self._tree_busy(obs, tree_cores)
        hard_limit = limit * w.busy_stall_factor
        if busy and silence <= hard_limit:
            if self._busy_warned_at is not None:
                return []
            self._busy_warned_at = obs.now
            evidence = self._evidence(obs, tree_cores, worker_cores)
            evidence.update(
                {
                    "confirmed": False,
                    "busy": True,
                    "silence_s": round(silence, 1),
                    "limit_s": round(limit, 1),
                    "restart_at_s": round(hard_limit, 1),
                    "basis": basis,
                    "longest_interval_s": None if longest is None else round(longest, 3),
                    "intervals_known": known,
                }
            )
            where = f"step {progress.step}" if stepped else "before the first step"
            doing = self._busy_words(tree_cores)
            return [
                make_event(
                    obs,
                    "stall",
                    "warning",
                    f"no step for {duration(silence)} ({where}), over the {duration(limit)} "
                    f"{_BASIS_WORDS[basis]} limit, but the job is busy ({doing}): "
                    f"stacks are dumped now; it restarts if no step comes within "
                    f"{duration(hard_limit)} (watchdog.busy_stall_factor {w.busy_stall_factor:g})",
                    evidence,
                    "dump",
                )
            ]
        if busy:
            limit = hard_limit
        evidence = self._evidence(obs, tree_cores, worker_cores)
        evidence.update(
            {
                "confirmed": bool(confirmed_by),
                "confirmed_by": confirmed_by,
                "silence_s": round(silence, 1),
                "limit_s": round(limit, 1),
                "basis": basis,
                "longest_interval_s": None if longest is None else round(longest, 3),
                "intervals_known": known,
                "stall_factor": w.stall_factor,
            }
        )
        self._stalled_since = obs.now
        where = f"step {progress.step}" if stepped else "before the first step"
        if confirmed_by:
            signals = ", ".join(_SIGNAL_WORDS.get(s, s) for s in confirmed_by)
            message = (
                f"no step for {duration(silence)} ({where}) and {signals} for "
                f"{w.confirm_s:.0f} s: the run is hung; stacks are dumped, then it "
                "restarts from its newest checkpoint"
            )
        else:
            message = (
                f"no step for {duration(silence)} ({where}), over the {duration(limit)} "
                f"{_BASIS_WORDS[basis]} limit; stacks are dumped, then it restarts from "
                "its newest checkpoint"
            )
        return [make_event(obs, "stall", "critical", message, evidence, "restart")]

    def _tree_busy(self, obs: Observation, tree_cores: float | None) -> bool:
        """Whether the training tree still works: it uses CPU, or a GPU of the job is busy."""
        if tree_cores is not None and tree_cores >= CPU_FLAT_CORES:
            return True
        w = self.watchdog
        return any(gpu_busy(g, self._busy, w.power_collapse_fraction) for g in self._job_gpus)

    @staticmethod
    def _busy_words(tree_cores: float | None) -> str:
        if tree_cores is not None and tree_cores >= CPU_FLAT_CORES:
            return f"its processes use {tree_cores:.2f} cores"
        return "its GPU is busy"

    def _gpu_signals(self) -> list[str]:
        reasons = self._quiet_reasons
        out = []
        if "idle" in reasons:
            out.append("gpu_idle")
        if "power_low" in reasons:
            out.append("gpu_power_low")
        if "lost" in reasons:
            out.append("gpu_lost")
        return out or ["gpu_idle"]

    # -- without step progress -------------------------------------------------------

    def _signals_only(self, obs: Observation, gpu_known: bool) -> Sequence[Event]:
        w = self.watchdog
        span = w.stall_min_s if (self._gpu_busy_seen or not gpu_known) else w.startup_timeout_s
        if obs.now - obs.attempt_started < span:
            return []
        tree_cores = self._tree_cpu.rate(obs.now, span)
        if tree_cores is None or tree_cores >= CPU_FLAT_CORES:
            return []
        if gpu_known and self._quiet.held(obs.now) < span:
            return []
        confirmed_by = ["cpu_flat", *(self._gpu_signals() if gpu_known else [])]
        evidence = self._evidence(obs, tree_cores, self._worker_cpu.rate(obs.now, w.confirm_s))
        evidence.update(
            {
                "confirmed": True,
                "confirmed_by": confirmed_by,
                "basis": "signals_only",
                "signals_held_s": round(span, 1),
                "note": "the job reports no steps (no harness, no progress pattern): "
                "decided on GPU and CPU signals alone",
            }
        )
        self._stalled_since = obs.now
        what = "GPU idle and no CPU used" if gpu_known else "no CPU used"
        return [
            make_event(
                obs,
                "stall",
                "critical",
                f"{what} by the job for {duration(span)}; it reports no steps, so these "
                "signals alone say it is hung; stacks are dumped, then it restarts",
                evidence,
                "restart",
            )
        ]

    # -- evidence --------------------------------------------------------------------

    def _evidence(
        self, obs: Observation, tree_cores: float | None, worker_cores: float | None
    ) -> dict[str, Any]:
        procs = processes(obs.sample)
        gpu_facts = []
        for g in self._job_gpus:
            facts = gpu_brief(g)
            median = self._busy.median(g)
            facts["busy_median_w"] = None if median is None else round(median, 1)
            gpu_facts.append(facts)
        return {
            "progress": obs.progress.source,
            "step": obs.progress.step,
            "phase": obs.progress.phase,
            "last_step_time": obs.progress.last_step_time,
            "tree_cpu_cores": None if tree_cores is None else round(tree_cores, 3),
            "worker_cpu_cores": None if worker_cores is None else round(worker_cores, 3),
            "gpu_quiet_s": round(self._quiet.held(obs.now), 1),
            "gpus": gpu_facts,
            "processes": len(procs),
            "workers": len(workers(obs.sample)),
            "zombies": [_proc_brief(p) for p in procs if p.is_zombie][:16],
            "disk_sleep": [_proc_brief(p) for p in procs if p.state == "disk-sleep"][:16],
        }


_BASIS_WORDS = {
    "startup": "start-up",
    "warmup": "warm-up",
    "learned": "learned",
    "checkpoint": "checkpoint",
    "after_training": "after-training",
}


def _proc_brief(p: ProcessSnapshot) -> dict[str, Any]:
    return {"pid": p.pid, "ppid": p.ppid, "name": p.name, "state": p.state, "age_s": p.age_s}
