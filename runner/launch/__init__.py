"""Launching a job: pre-flight, the three backends, the run registry.

    local      this machine: device choice, dataset, the agent in-process (``./train.sh``)
    docker     the job's image on the local Docker engine, the agent inside it
    remote     a rented vast.ai host: rent or reuse, verify, bring the dataset, agent detached
    hostside   what runs beside the training process on any backend: ``runner agent start``
    preflight  the checks made before anything is started or paid for
    images     building the images in ``images/`` through the Docker SDK
    sync       bringing a dataset folder to a host (rsync over runner's SSH, with progress)
    runs       the run registry (SQLite, beside the instances)

A launch writes ``RUN_DIR/launch.json`` (:class:`runner.rundir.Launch`): everything the
agent on the host needs, secrets named but never given. Nothing here imports the CLI.
"""
