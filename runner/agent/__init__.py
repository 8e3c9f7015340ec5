"""The agent: supervises one training run, detects what goes wrong, acts with evidence.

    observe    Observation, Progress, Detector: what detectors see each tick
    detectors  one class per failure users hit (stall, power collapse, zombies, ...)
    progress   step progress from harness heartbeats or the job's log pattern
    supervisor Supervisor: the process group, sampling loop, actions, restarts
    restart    the restart budget and override rewriting (smaller batch on OOM)
    stacks     stack dumps of the whole tree (py-spy, faulthandler fallback)
    logs       the bounded per-attempt log of the training process

Events and status (what it writes) are :mod:`runner.rundir`, the run folder's schema.
The agent never imports the CLI or any display code; ``runner watch`` reads the
files it writes.
"""
