"""The detectors: one class per failure users hit, each fed every tick's Observation.

    detector                 kind(s)                          severity / action
    GpuHealthDetector        xid, ecc, gpu_lost               critical/stop (DCGM FAIL), warning
    OomDetector              oom                              critical/stop (died of it, or no
                                                              step after), warning (handled)
    DiskDetector             disk_full, disk_low              critical/stop (log), critical/none,
                                                              warning/none
    NcclTimeoutDetector      nccl_timeout                     critical/restart
    StallDetector            stall                            critical/restart
    ZombieWorkersDetector    zombie_workers                   warning/dump
    PowerCollapseDetector    power_collapse                   warning/none (confirms a stall)
    ThrottleDetector         thermal, power_throttle          warning/none
    InputBoundDetector       input_bound                      warning/none (advice)
    SharedMemoryDetector     shm_low                          warning/none
    RamPressureDetector      ram_pressure                     warning/none
    LossNanDetector          loss_nan                         critical/stop (not restart:
                                                              a resume diverges again)
    ExplosionDetector        loss_explosion, grad_explosion   warning/none
    ThroughputDetector       throughput_drop                  warning/none (no system cause)

Every detector reports a condition once when it starts, with the numbers that
triggered it in ``evidence``, and may report one ``info`` event when it clears.
None acts on one weak signal alone, and none raises on odd input (``None``
fields, no GPUs, no process tree, a missing disk role). Thresholds come from
:class:`runner.spec.WatchdogSpec`; the few constants beyond it are documented
module constants.
"""

from __future__ import annotations

from runner.agent.detectors._gpu import GpuHealthDetector, PowerCollapseDetector, ThrottleDetector
from runner.agent.detectors._host import DiskDetector, RamPressureDetector, SharedMemoryDetector
from runner.agent.detectors._input import InputBoundDetector
from runner.agent.detectors._logs import NcclTimeoutDetector, OomDetector
from runner.agent.detectors._procs import ZombieWorkersDetector
from runner.agent.detectors._stall import StallDetector
from runner.agent.detectors._training import (
    ExplosionDetector,
    LossNanDetector,
    ThroughputDetector,
)
from runner.agent.observe import Detector
from runner.spec import WatchdogSpec

__all__ = [
    "DiskDetector",
    "ExplosionDetector",
    "GpuHealthDetector",
    "InputBoundDetector",
    "LossNanDetector",
    "NcclTimeoutDetector",
    "OomDetector",
    "PowerCollapseDetector",
    "RamPressureDetector",
    "SharedMemoryDetector",
    "StallDetector",
    "ThrottleDetector",
    "ThroughputDetector",
    "ZombieWorkersDetector",
    "default_detectors",
]


def default_detectors(watchdog: WatchdogSpec, *, expected_gpus: int = 0) -> list[Detector]:
    """One fresh instance of every detector for one run.

    In precedence order: a bad host, an OOM or a full disk (stop) come before a
    stall (restart), so where several fire in one tick the first names the cause.
    ``expected_gpus`` is how many GPUs the job should see (0: unknown);
    ``Observation.num_gpus_expected`` overrides it when set.
    """
    return [
        GpuHealthDetector(watchdog, expected_gpus=expected_gpus),
        OomDetector(watchdog),
        DiskDetector(watchdog),
        LossNanDetector(watchdog),
        NcclTimeoutDetector(watchdog),
        StallDetector(watchdog),
        ZombieWorkersDetector(watchdog),
        PowerCollapseDetector(watchdog),
        ThrottleDetector(watchdog),
        InputBoundDetector(watchdog),
        SharedMemoryDetector(watchdog),
        RamPressureDetector(watchdog),
        ExplosionDetector(watchdog),
        ThroughputDetector(watchdog),
    ]
