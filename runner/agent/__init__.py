"""The agent: supervises one training run, detects what goes wrong, acts with evidence.

    events     Event, EventLog, Status: the run folder's events.jsonl and status.json
    observe    Observation, Progress, Detector: what detectors see each tick
    detectors  one class per failure users hit (stall, power collapse, zombies, ...)
    supervisor Supervisor: the process group, logs, sampling loop, restarts
    stacks     stack dumps of the whole tree (py-spy, faulthandler fallback)

The agent never imports the CLI or any display code; ``runner watch`` reads the
files it writes.
"""
